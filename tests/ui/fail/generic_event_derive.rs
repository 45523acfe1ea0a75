// Guards: `#[derive(Event)]` on a generic type is rejected on its generics (an event's
// identity is a constant of its name).

use tidewater::prelude::*;

#[derive(Debug, Clone, Event)]
struct Wrapper<T>(T);

fn main() {}
