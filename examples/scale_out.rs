//! Scale-out on PostgreSQL: worker processes share one database, and the runs of a worker that
//! dies finish on the others. `examples/scale_out.sh` runs the whole story (a private
//! PostgreSQL, two workers, an API-only server, a batch of orders started over HTTP, one worker
//! killed with `SIGKILL` mid-batch); this binary is each part of it:
//!
//! ```sh
//! DB="host=127.0.0.1 port=5432 user=postgres dbname=runs"
//! cargo run --example scale_out -- worker "$DB" worker-a &   # as many as you like
//! cargo run --example scale_out -- serve "$DB" 8080 &        # starts go to the workers
//! curl -s localhost:8080/workflows/orders/run-nowait -d '{"handler_id": "order-00", "start_event": 0}'
//! cargo run --example scale_out -- enqueue "$DB" 20          # or straight into the queue
//! cargo run --example scale_out -- watch "$DB" 20            # until all have finished
//! ```
//!
//! Every step prints `[worker] key step (invocation key)` when it begins and `... step done`
//! when it is through, so the logs show which worker ran what, and which step of a killed
//! worker's run ran again elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tidewater::prelude::*;
use tidewater::store::{RunStatus, Store};
use tidewater_pg::{PgOptions, PgStore};

/// An order, checked.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Checked {
    order: u32,
}

/// An order, paid.
#[derive(Debug, Clone, Event, Serialize, Deserialize)]
struct Paid {
    order: u32,
    cents: u64,
}

/// Three steps, each a little slow, so a batch takes a few seconds.
struct Orders {
    /// Which worker process this is (printed by the steps, and in the output).
    name: String,
}

impl Orders {
    async fn step(&self, ctx: &Context<Self>, what: &str, order: u32) {
        // The invocation key names this step invocation, the same after a crash: the
        // idempotency key to give a payment provider, so a step run twice pays once.
        println!(
            "[{}] order-{order:02} {what} ({})",
            self.name,
            ctx.invocation_key()
        );
        // 200 to 400 ms, by order: the runs do not move in step.
        let pause = 200 + u64::from(order * 37 % 5) * 50;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        println!("[{}] order-{order:02} {what} done", self.name);
    }
}

#[workflow(durable)]
impl Orders {
    #[step]
    async fn check(&self, ctx: &Context<Self>, ev: StartEvent<u32>) -> Checked {
        self.step(ctx, "check", ev.0).await;
        Checked { order: ev.0 }
    }

    #[step]
    async fn pay(&self, ctx: &Context<Self>, ev: Checked) -> Paid {
        self.step(ctx, "pay", ev.order).await;
        Paid {
            order: ev.order,
            cents: 1000 + u64::from(ev.order),
        }
    }

    #[step]
    async fn ship(&self, ctx: &Context<Self>, ev: Paid) -> StopEvent<String> {
        self.step(ctx, "ship", ev.order).await;
        StopEvent(format!("{} cents, shipped by {}", ev.cents, self.name))
    }
}

fn store(conninfo: &str) -> Arc<PgStore> {
    // A short lease, so that a worker on another machine would be replaced quickly too (on
    // this machine a dead worker's runs are taken at once: its process is gone).
    Arc::new(
        PgStore::open(PgOptions::new(conninfo).lease_ttl(Duration::from_secs(3)))
            .unwrap_or_else(|e| panic!("cannot open the database: {e}")),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "worker" => {
            let runner = Orders { name: arg(2) }.runner().store(store(&arg(1)));
            // Takes up to 4 runs at a time from the queue, woken by LISTEN/NOTIFY.
            let worker = runner.work(4)?;
            println!("[{}] working", arg(2));
            tokio::signal::ctrl_c().await?;
            // Ctrl-C: the runs in hand are suspended at their next checkpoint, for the others.
            let ended = worker.shutdown().await?;
            println!("[{}] shut down after {ended} runs", arg(2));
        }
        "serve" => {
            // An API-only server on the same database: a start is enqueued for the workers,
            // and the run is streamed, answered and reported from the database.
            let port: u16 = arg(2).parse()?;
            let server = tidewater_server::Server::new()
                .serve_workflow("orders", Orders { name: "-".into() }.runner())
                .postgres_with(
                    PgOptions::new(arg(1)).lease_ttl(Duration::from_secs(3)),
                    arg(1),
                )
                .api_only(true);
            println!("[server] serving on http://127.0.0.1:{port}");
            server.serve(("127.0.0.1", port)).await?;
        }
        "enqueue" => {
            let runner = Orders { name: "-".into() }.runner().store(store(&arg(1)));
            let n: u32 = arg(2).parse()?;
            for order in 0..n {
                runner.enqueue(&format!("order-{order:02}"), order)?;
            }
            println!("enqueued {n} orders");
        }
        "watch" => {
            let store = store(&arg(1));
            let n: usize = arg(2).parse()?;
            let start = Instant::now();
            loop {
                let finished = store.keys(RunStatus::Finished)?;
                let running = store.keys(RunStatus::Running)?.len();
                println!(
                    "[watch] {:>4.1} s: {} finished, {running} running",
                    start.elapsed().as_secs_f64(),
                    finished.len()
                );
                if finished.len() >= n {
                    for key in finished {
                        let output = store.load(&key)?.and_then(|r| r.output);
                        println!("[watch] {key}: {}", output.unwrap_or_default());
                    }
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(120) {
                    return Err("not every order finished in two minutes".into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        _ => {
            eprintln!(
                "usage: scale_out worker <conninfo> <name> | serve <conninfo> <port> | enqueue <conninfo> <n> | watch <conninfo> <n>"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
