//! Durable runs and their store inbox ([`Store::post`](crate::store::Store::post)): a
//! watcher per live durable run reads the messages posted to it (by any process), hands them to
//! the run loop, and the run's next checkpoint records how far it read.
//!
//! Only runs with a journal have a watcher: a run that is not durable pays nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::context::{Envelope, RunShared, Sender};
use crate::event::EventKind;
use crate::store::{Message, MessageBody, StoreErrorKind};
use crate::workflow::Workflow;

/// How far a durable run read its store inbox.
///
/// The watcher hands message `n` to the run's mail and moves `posted` to `n` under the mail's
/// lock; the run loop, when it takes the mail (same lock), moves `routed` to `posted`. A
/// checkpoint records `routed`: every message up to it was routed before the checkpoint was
/// taken, so it is consumed exactly when that checkpoint commits.
#[derive(Debug, Default)]
pub(crate) struct InboxCursor {
    posted: AtomicU64,
    routed: AtomicU64,
    closed: AtomicBool,
    close: tokio::sync::Notify,
}

impl InboxCursor {
    /// A cursor that has read (and routed) the messages up to `read`.
    pub(crate) fn new(read: u64) -> Arc<InboxCursor> {
        Arc::new(InboxCursor {
            posted: AtomicU64::new(read),
            routed: AtomicU64::new(read),
            ..InboxCursor::default()
        })
    }

    /// The last message routed (what a checkpoint records).
    pub(crate) fn routed(&self) -> u64 {
        self.routed.load(Ordering::Acquire)
    }

    /// The run loop took its mail: every message posted so far is being routed.
    pub(crate) fn took_mail(&self) {
        self.routed
            .store(self.posted.load(Ordering::Acquire), Ordering::Release);
    }

    /// Message `n` is in the run's mail (called under the mail's lock).
    pub(crate) fn posted(&self, n: u64) {
        self.posted.fetch_max(n, Ordering::AcqRel);
    }

    fn read(&self) -> u64 {
        self.posted.load(Ordering::Acquire)
    }

    /// The run is over: its watcher stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Hands message `n` of the run's store inbox to the run: an event goes to its mail (as
/// `Handler::send_event` sends it), a cancel cancels it. A message already handed over is
/// skipped; one the run cannot take (an event of no type of its graph, or one no step accepts
/// and no request waits for) is skipped with a warning, and counts as read.
pub(crate) fn deliver<W: Workflow>(shared: &RunShared<W>, n: u64, message: Message) {
    let Some(journal) = &shared.journal else {
        return;
    };
    if n <= journal.inbox.read() {
        return;
    }
    match message.body {
        MessageBody::Event(record) => match W::__decode_event(&record.event, record.data) {
            Ok(event)
                if event.kind() == EventKind::Response || W::GRAPH.is_accepted(event.id()) =>
            {
                let envelope = Envelope {
                    event,
                    target: None,
                    from: Sender::Outside,
                };
                shared.post_from_inbox(n, Some(envelope));
            }
            Ok(event) => {
                tracing::warn!(key = %journal.key, id = %message.id, event = event.name(),
                    "inbox message skipped: no step of the run accepts its event");
                shared.post_from_inbox(n, None);
            }
            Err(reason) => {
                tracing::warn!(key = %journal.key, id = %message.id, %reason,
                    "inbox message skipped: its event does not decode");
                shared.post_from_inbox(n, None);
            }
        },
        MessageBody::Cancel => {
            shared.post_from_inbox(n, None);
            shared.cancel();
        }
    }
}

/// Starts the watcher of a durable run's store inbox: it reads the messages posted after the
/// ones the run has, whenever the store announces a post to the run ([`Store::wakeups`]) and
/// at least every `every`, until the run is over.
///
/// [`Store::wakeups`]: crate::store::Store::wakeups
pub(crate) fn watch<W: Workflow>(shared: &Arc<RunShared<W>>, every: Duration) {
    let Some(journal) = &shared.journal else {
        return;
    };
    let store = journal.store.clone();
    let key = journal.key.clone();
    let cursor = journal.inbox.clone();
    let run: Weak<RunShared<W>> = Arc::downgrade(shared);
    let signal = store.wakeups().map(|wakeups| wakeups.run(&key));
    tokio::spawn(async move {
        loop {
            let posted = async {
                match &signal {
                    Some(signal) => signal.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = posted => {}
                () = cursor.close.notified() => {}
            }
            if cursor.is_closed() {
                return;
            }
            // On the blocking pool: a store read (a round trip to PostgreSQL, a file read)
            // never holds a tokio worker, which would stall every run on it (all of them, on a
            // current-thread runtime).
            let read = {
                let (store, key, after) = (store.clone(), key.clone(), cursor.read());
                tokio::task::spawn_blocking(move || store.inbox(&key, after)).await
            };
            let messages = match read {
                Ok(Ok(messages)) => messages,
                // The runtime is shutting down.
                Err(_) => return,
                Ok(Err(error)) if error.kind == StoreErrorKind::Unsupported => return,
                Ok(Err(error)) => {
                    tracing::warn!(%key, %error, "cannot read the run's inbox; trying again");
                    continue;
                }
            };
            let Some(shared) = run.upgrade() else {
                return;
            };
            if cursor.is_closed() {
                return;
            }
            for (n, message) in messages {
                deliver(&shared, n, message);
            }
        }
    });
}
