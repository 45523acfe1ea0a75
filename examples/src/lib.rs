//! Runnable examples: see the `[[example]]` targets of this package. This library holds what
//! several examples share.

use std::error::Error;
use std::process::ExitCode;

/// Ends an example: success, or the error printed with its causes (`error: a: b: c`) and a
/// failing exit status.
///
/// ```
/// let failed: Result<(), Box<dyn std::error::Error>> = Err("no model".into());
/// assert_eq!(examples::exit_with(failed), std::process::ExitCode::FAILURE);
/// ```
pub fn exit_with(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
