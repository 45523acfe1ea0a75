//! What a step returns, turned into the events it emits: `#[workflow]` unfolds each step's
//! return type (an event, `Option`, `Vec`, `Either`, `()`, or a `Result` of those) into code
//! that pushes its events onto an [`Emitted`].

use crate::event::DynEvent;

/// The events one step invocation emitted, in order. Most steps emit zero or one event, so
/// those cases do not allocate beyond the event itself.
#[doc(hidden)]
#[derive(Debug, Default)]
pub enum Emitted {
    /// Nothing (`None`, `()`, an empty `Vec`).
    #[default]
    Nothing,
    /// One event.
    One(DynEvent),
    /// Several events, in the order the step returned them.
    Many(Vec<DynEvent>),
}

impl Emitted {
    /// Appends an event.
    pub fn push(&mut self, event: DynEvent) {
        // The usual case, one event, without moving `self` out and back.
        if matches!(self, Emitted::Nothing) {
            *self = Emitted::One(event);
            return;
        }
        *self = match std::mem::take(self) {
            Emitted::Nothing => Emitted::One(event),
            Emitted::One(first) => Emitted::Many(vec![first, event]),
            Emitted::Many(mut all) => {
                all.push(event);
                Emitted::Many(all)
            }
        }
    }
}
