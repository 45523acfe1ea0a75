// Guards hygiene: user items named `Result` (an alias with one parameter), `Option`, `Box`,
// `Vec`, `Some`, `Ok`, `Arc`, `Send`, `Future` in scope, and glob imports, never break the
// expansion (it only names `::core` and `::tidewater::__private`).

#![allow(dead_code)]
// The second glob overlaps the prelude on purpose: glob imports must not confuse the expansion.
#![allow(unused_imports)]

use tidewater::prelude::*;
use tidewater::*;

#[derive(Debug)]
struct MyErr;

impl std::fmt::Display for MyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}

impl std::error::Error for MyErr {}

type Result<T> = std::result::Result<T, MyErr>;

struct Box;
struct Option;
struct Vec;
struct Some;
struct Ok;
struct Err;
struct Arc;
struct Send;
struct Future;

#[derive(Debug, Clone, Event)]
struct Middle(u32);

struct Shadowed;

#[workflow]
impl Shadowed {
    #[step]
    async fn first(&self, ev: StartEvent<u32>) -> Result<Middle> {
        if ev.0 == 0 {
            Result::Err(MyErr)
        } else {
            Result::Ok(Middle(ev.0))
        }
    }

    #[step]
    async fn second(&self, ev: Middle) -> StopEvent<u32> {
        StopEvent(ev.0 * 2)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Shadowed.run(2)).unwrap(), 4);
    assert!(rt.block_on(Shadowed.run(0)).is_err());
}
