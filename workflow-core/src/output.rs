//! What a step returns, turned into the events it emits.

use crate::error::BoxError;
use crate::event::{DynEvent, Either, Event};

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

/// A return type a step may have: an event, `Option`, `Vec`, [`Either`], `()`, or a `Result`
/// of any of those whose error converts into a boxed error.
///
/// The generated code calls [`StepOutput::into_emitted`] on what a step returns; which events
/// a step can emit is therefore exactly what its signature says, checked by rustc.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by a step",
    label = "not a step return type",
    note = "a step returns an event, `Option<_>`, `Vec<_>`, `Either<_, _>`, `()` or a `Result` of one of those"
)]
pub trait StepOutput: Send + 'static {
    /// Turns the value into the events it carries.
    ///
    /// # Errors
    /// The step's own error, when the value is an `Err`.
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError>;
}

impl<E: Event> StepOutput for E {
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError> {
        out.push(DynEvent::new(self));
        Ok(())
    }
}

impl StepOutput for () {
    fn into_emitted(self, _out: &mut Emitted) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<T: StepOutput> StepOutput for Option<T> {
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError> {
        match self {
            Some(value) => value.into_emitted(out),
            None => Ok(()),
        }
    }
}

impl<T: StepOutput> StepOutput for Vec<T> {
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError> {
        if self.is_empty() && matches!(out, Emitted::Nothing) {
            // An empty batch (no allocation): emits nothing, but the stuck diagnostic can tell
            // a fan-out of zero items from a step that emits nothing.
            *out = Emitted::Many(Vec::new());
        }
        for value in self {
            value.into_emitted(out)?;
        }
        Ok(())
    }
}

impl<L: StepOutput, R: StepOutput> StepOutput for Either<L, R> {
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError> {
        match self {
            Either::Left(value) => value.into_emitted(out),
            Either::Right(value) => value.into_emitted(out),
        }
    }
}

impl<T: StepOutput, E: Into<BoxError> + Send + 'static> StepOutput for Result<T, E> {
    fn into_emitted(self, out: &mut Emitted) -> Result<(), BoxError> {
        match self {
            Ok(value) => value.into_emitted(out),
            Err(error) => Err(error.into()),
        }
    }
}
