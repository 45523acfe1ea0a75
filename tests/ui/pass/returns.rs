// Guards the return shapes a step may have: an event, `Option`, `Vec`, `Either`, nested
// `Either`, `()`-free `Result` with a custom error, a one-argument `Result` alias (`io::Result<Vec<_>>`),
// and `Result` of a branch.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Split(u32);

#[derive(Debug, Clone, Event)]
struct Part(u32);

#[derive(Debug, Clone, Event)]
struct Small(u32);

#[derive(Debug, Clone, Event)]
struct Big(u32);

#[derive(Debug, Clone, Event)]
struct Huge(u32);

#[derive(Debug)]
struct TooBig;

impl std::fmt::Display for TooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too big")
    }
}

impl std::error::Error for TooBig {}

struct Shapes;

#[workflow]
impl Shapes {
    #[step]
    async fn start(&self, ev: StartEvent<u32>) -> Result<Split, TooBig> {
        if ev.0 > 1000 {
            Err(TooBig)
        } else {
            Ok(Split(ev.0))
        }
    }

    #[step]
    async fn split(&self, ev: Split) -> std::io::Result<Vec<Part>> {
        Ok(vec![Part(ev.0)])
    }

    #[step]
    async fn classify(&self, ev: Part) -> Either<Small, Either<Big, Huge>> {
        match ev.0 {
            0..10 => Either::Left(Small(ev.0)),
            10..100 => Either::Right(Either::Left(Big(ev.0))),
            _ => Either::Right(Either::Right(Huge(ev.0))),
        }
    }

    #[step]
    async fn small(&self, ev: Small) -> Option<StopEvent<String>> {
        Some(StopEvent(format!("small {}", ev.0)))
    }

    #[step]
    async fn big(&self, ev: Big) -> Result<Option<StopEvent<String>>, std::io::Error> {
        Ok(Some(StopEvent(format!("big {}", ev.0))))
    }

    #[step]
    async fn huge(&self, ev: Huge) -> StopEvent<String> {
        StopEvent(format!("huge {}", ev.0))
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Shapes.run(3)).unwrap(), "small 3");
    assert_eq!(rt.block_on(Shapes.run(30)).unwrap(), "big 30");
    assert_eq!(rt.block_on(Shapes.run(300)).unwrap(), "huge 300");
    let error = rt.block_on(Shapes.run(3000)).unwrap_err();
    assert!(error.to_string().contains("start"), "{error}");
    assert!(Shapes::graph().validate().is_ok());
}
