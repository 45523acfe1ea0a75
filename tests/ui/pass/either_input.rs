// Guards a step that accepts two event types through an `Either` parameter.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Word(String);

#[derive(Debug, Clone, Event)]
struct Number(u32);

struct Join;

#[workflow]
impl Join {
    #[step]
    async fn start(&self, ev: StartEvent<u32>) -> Either<Word, Number> {
        if ev.0 == 0 {
            Either::Left(Word("zero".into()))
        } else {
            Either::Right(Number(ev.0))
        }
    }

    #[step]
    async fn finish(&self, ev: Either<Word, Number>) -> StopEvent<String> {
        match ev {
            Either::Left(word) => StopEvent(word.0),
            Either::Right(number) => StopEvent(number.0.to_string()),
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(Join.run(0)).unwrap(), "zero");
    assert_eq!(rt.block_on(Join.run(7)).unwrap(), "7");
}
