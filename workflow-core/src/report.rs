//! An error printed for a person: the error and each of its causes as sentences.

use std::error::Error;
use std::fmt;
use std::process::ExitCode;

use crate::error::BoxError;

/// Any error, printed for a person: what went wrong, then why, one cause per line.
///
/// Return it from `main` and a failed run prints sentences instead of a `Debug` dump of nested
/// enums. Every `Send + Sync` error converts into it with `?`, so `main` can mix a run's
/// [`WorkflowError`](crate::WorkflowError) with I/O, JSON or LLM errors:
///
/// ```no_run
/// use tidewater::prelude::*;
///
/// # struct Flow;
/// # #[workflow] impl Flow { #[step] async fn s(&self, ev: StartEvent<()>) -> StopEvent<()> { StopEvent(()) } }
/// #[tokio::main]
/// async fn main() -> Result<(), Report> {
///     Flow.run(()).await?;
///     Ok(())
/// }
/// ```
///
/// A run that fails in step `fetch` then ends the process with exit status 1 and prints
///
/// ```text
/// Error: step `fetch` failed after 1 attempt(s)
///   because: the model server answered 404 Not Found
///   because: connection refused
/// ```
///
/// [`Report::exit`] does the same for a `main` that returns [`ExitCode`], and the `Display` form
/// is the whole chain on one line (`a: b: c`), for logs:
///
/// ```
/// use tidewater::Report;
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let report = Report::new(io);
/// assert_eq!(report.to_string(), "no such file");
/// assert_eq!(format!("{report:?}"), "no such file");
/// ```
///
/// `Report` does not implement [`std::error::Error`] itself (so that every error converts into
/// it); reach the error with [`Report::error`].
pub struct Report(BoxError);

impl Report {
    /// Wraps an error.
    pub fn new(error: impl Into<BoxError>) -> Report {
        Report(error.into())
    }

    /// The error, for matching or downcasting
    /// (`report.error().downcast_ref::<WorkflowError>()`).
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// Takes the error back.
    pub fn into_error(self) -> BoxError {
        self.0
    }

    /// The sentences of the report: the error first, then each cause, each said once (a
    /// wrapper whose text already ends with its cause's text does not repeat it).
    ///
    /// ```
    /// use tidewater::{Report, WorkflowError};
    /// let failed = WorkflowError::StepFailed {
    ///     step: "fetch",
    ///     attempts: 1,
    ///     source: "connection refused".into(),
    /// };
    /// assert_eq!(
    ///     Report::new(failed).sentences(),
    ///     ["step `fetch` failed after 1 attempt(s)", "connection refused"]
    /// );
    /// ```
    pub fn sentences(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![self.0.to_string()];
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !out.last().is_some_and(|last| last.ends_with(&text)) {
                out.push(text);
            }
            source = cause.source();
        }
        out
    }

    /// Ends a `main` that returns [`ExitCode`]: success, or the report printed on standard
    /// error (`error: ...` then one `because: ...` line per cause) and exit status 1.
    ///
    /// ```
    /// use std::process::ExitCode;
    /// use tidewater::Report;
    /// let failed: Result<(), Report> = Err(Report::new("no model configured"));
    /// assert_eq!(Report::exit(failed), ExitCode::FAILURE);
    /// assert_eq!(Report::exit(Ok::<(), Report>(())), ExitCode::SUCCESS);
    /// ```
    pub fn exit<E: Into<Report>>(result: Result<(), E>) -> ExitCode {
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {:?}", error.into());
                ExitCode::FAILURE
            }
        }
    }
}

impl<E: Into<BoxError>> From<E> for Report {
    fn from(error: E) -> Report {
        Report(error.into())
    }
}

/// The error and its causes, one sentence a line: what `main` prints after `Error: `.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentences = self.sentences();
        let mut lines = sentences.iter();
        if let Some(first) = lines.next() {
            f.write_str(first)?;
        }
        for cause in lines {
            write!(f, "\n  because: {cause}")?;
        }
        Ok(())
    }
}

/// The error and its causes on one line, joined by `: `.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentences().join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkflowError;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "could not read the prompt: {}", self.0)
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn prints_each_cause_once_one_a_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let failed = WorkflowError::StepFailed {
            step: "load",
            attempts: 2,
            source: Box::new(Wrapper(io)),
        };
        let report = Report::from(failed);
        assert_eq!(
            format!("{report:?}"),
            "step `load` failed after 2 attempt(s)\n  because: could not read the prompt: no such file"
        );
        assert_eq!(
            report.to_string(),
            "step `load` failed after 2 attempt(s): could not read the prompt: no such file"
        );
        assert!(report.error().downcast_ref::<WorkflowError>().is_some());
    }

    #[test]
    fn question_mark_converts_any_error() {
        fn parse() -> Result<u32, Report> {
            Ok("x".parse::<u32>()?)
        }
        let report = parse().unwrap_err();
        assert_eq!(report.sentences(), ["invalid digit found in string"]);
        assert_eq!(Report::exit(parse().map(drop)), ExitCode::FAILURE);
    }
}
