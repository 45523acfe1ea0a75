// Guards: a type that is no event deep inside a return type (`Result<Vec<Either<Draft, String>>, _>`)
// is reported once, on that type, and the return type around it is not blamed as well.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Draft(String);

struct Flow;

#[workflow]
impl Flow {
    #[step]
    async fn write(
        &self,
        ev: StartEvent<String>,
    ) -> Result<Vec<Either<Draft, String>>, std::io::Error> {
        Ok(vec![Either::Left(Draft(ev.0))])
    }

    #[step]
    async fn finish(&self, ev: Draft) -> StopEvent<String> {
        StopEvent(ev.0)
    }
}

fn main() {}
