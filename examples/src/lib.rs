//! Runnable examples: see the `[[example]]` targets of this package. Each ends its `main` with
//! [`tidewater::Report`], the library's own error report, so a failure prints sentences and a
//! failing exit status.
