// Guards: `correlate = field` on an event that is not a request is rejected on the field: only a
// request names the field it shares with the response that answers it.

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
#[event(response, correlate = id)]
struct Verdict {
    id: u32,
}

fn main() {}
