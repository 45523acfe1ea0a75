//! The run's event stream: progress events written by steps, step activity, and one terminal
//! outcome, delivered to any number of subscribers.
//!
//! Policy for a slow consumer: each subscriber has its own bounded buffer
//! ([`DEFAULT_STREAM_CAPACITY`] items unless the runner says otherwise). When it is full, the
//! oldest item is dropped and the subscriber's [`EventStream::lagged`] count grows; the run
//! never waits for a consumer. The terminal item is never dropped, and a subscriber that goes
//! away is simply forgotten: it never stops the run.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use futures_core::Stream;

use crate::event::DynEvent;

/// How many items a subscriber buffers before the oldest is dropped.
pub const DEFAULT_STREAM_CAPACITY: usize = 1024;

/// One item of a run's stream.
///
/// ```
/// use tidewater::{StreamItem, Outcome};
/// let end = StreamItem::End(Outcome::Cancelled);
/// assert!(end.is_terminal());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StreamItem {
    /// An event a step wrote with `ctx.write_event_to_stream`.
    Event(DynEvent),
    /// A step invocation started (only when the runner has `internal_events(true)`).
    StepStarted {
        /// The step's name.
        step: &'static str,
        /// Which of the step's workers runs it (`0..num_workers`).
        worker: u32,
    },
    /// A step invocation finished, successfully or not (only with `internal_events(true)`).
    StepFinished {
        /// The step's name.
        step: &'static str,
        /// Which of the step's workers ran it.
        worker: u32,
    },
    /// The run ended; always the last item, exactly once.
    End(Outcome),
}

impl StreamItem {
    /// Is this the run's last item?
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamItem::End(_))
    }

    /// The event a step wrote, if this is one and it is an `E`.
    pub fn event<E: crate::Event>(&self) -> Option<&E> {
        match self {
            StreamItem::Event(event) => event.downcast_ref(),
            _ => None,
        }
    }
}

/// How a run ended, as told on its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A step emitted the stop event.
    Stopped,
    /// A step failed or panicked, or the run was stuck; the message is the error with its
    /// causes (`step `fetch` failed after 1 attempt(s): connection refused`).
    Failed(String),
    /// The run or one step ran out of time.
    TimedOut(String),
    /// The run was cancelled.
    Cancelled,
    /// A durable run parked for an answer and moved to its store (see `Runner::answer`).
    Suspended,
}

#[derive(Debug)]
struct Buffer {
    items: VecDeque<StreamItem>,
    lagged: u64,
    ended: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Subscriber {
    buffer: Mutex<Buffer>,
    capacity: usize,
}

/// The publishing side, owned by the run.
#[derive(Debug)]
pub(crate) struct Publisher {
    subscribers: Mutex<Subscribers>,
    any: AtomicBool,
    ended: AtomicBool,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Weak<Subscriber>>,
    /// The handler's own stream, which sees the run from its very start.
    reserved: Reserved,
}

/// The handler's stream is made lazily: a run nobody reads (a parked run, most runs awaited
/// for their output) never pays for a subscriber, yet `Handler::events` still misses nothing.
#[derive(Debug, Default)]
enum Reserved {
    /// No reservation, or the handler took its stream.
    #[default]
    None,
    /// Reserved, nothing published yet: made at the first item or when the handler asks.
    Pending,
    /// Made at the first item; held here until the handler takes it.
    Made(Arc<Subscriber>),
    /// The run ended with nothing else published: the stream is this one terminal item.
    Ended(Outcome),
}

impl Publisher {
    pub(crate) fn new(capacity: usize) -> Publisher {
        Publisher {
            subscribers: Mutex::new(Subscribers::default()),
            any: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            capacity: capacity.max(1),
        }
    }

    /// Does anyone listen? A cheap check the run makes before building an item.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    fn new_subscriber(&self) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            buffer: Mutex::new(Buffer {
                items: VecDeque::new(),
                lagged: 0,
                ended: false,
                waker: None,
            }),
            capacity: self.capacity,
        })
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        let mut subscribers = lock(&self.subscribers);
        self.subscribe_locked(&mut subscribers)
    }

    fn subscribe_locked(&self, subscribers: &mut Subscribers) -> EventStream {
        let subscriber = self.new_subscriber();
        if self.ended.load(Ordering::Acquire) {
            // Subscribed after the end: the stream is over at once (and says why it is empty).
            lock(&subscriber.buffer).ended = true;
        } else {
            subscribers.list.push(Arc::downgrade(&subscriber));
            self.any.store(true, Ordering::Release);
        }
        EventStream { subscriber }
    }

    /// Reserves the handler's stream from the run's start (see [`Reserved`]); before the run
    /// publishes anything.
    pub(crate) fn reserve(&self) {
        lock(&self.subscribers).reserved = Reserved::Pending;
        self.any.store(true, Ordering::Release);
    }

    /// The reserved stream, from the run's start; a fresh subscription once it was taken.
    pub(crate) fn take_reserved(&self) -> EventStream {
        let mut subscribers = lock(&self.subscribers);
        match std::mem::take(&mut subscribers.reserved) {
            Reserved::Made(subscriber) => EventStream { subscriber },
            Reserved::Ended(outcome) => {
                let subscriber = self.new_subscriber();
                let mut buffer = lock(&subscriber.buffer);
                buffer.items.push_back(StreamItem::End(outcome));
                buffer.ended = true;
                drop(buffer);
                EventStream { subscriber }
            }
            // Nothing was published yet: a subscription from now on is one from the start.
            Reserved::Pending | Reserved::None => self.subscribe_locked(&mut subscribers),
        }
    }

    /// The handler went away without taking its stream: nobody will read it.
    pub(crate) fn release_reserved(&self) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.reserved = Reserved::None;
        if subscribers.list.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    pub(crate) fn publish(&self, item: StreamItem) {
        if !self.has_subscribers() {
            return;
        }
        let terminal = item.is_terminal();
        let mut guard = lock(&self.subscribers);
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        let subscribers = &mut *guard;
        if let Reserved::Pending = subscribers.reserved {
            match item {
                StreamItem::End(outcome) if subscribers.list.is_empty() => {
                    subscribers.reserved = Reserved::Ended(outcome);
                    self.ended.store(true, Ordering::Release);
                    self.any.store(false, Ordering::Release);
                    return;
                }
                _ => {
                    let subscriber = self.new_subscriber();
                    subscribers.list.push(Arc::downgrade(&subscriber));
                    subscribers.reserved = Reserved::Made(subscriber);
                }
            }
        }
        let subscribers = &mut subscribers.list;
        subscribers.retain(|weak| {
            let Some(subscriber) = weak.upgrade() else {
                return false;
            };
            let mut buffer = lock(&subscriber.buffer);
            if buffer.items.len() >= subscriber.capacity {
                buffer.items.pop_front();
                buffer.lagged += 1;
            }
            buffer.items.push_back(item.clone());
            buffer.ended |= terminal;
            if let Some(waker) = buffer.waker.take() {
                waker.wake();
            }
            true
        });
        if subscribers.is_empty() && matches!(guard.reserved, Reserved::None) {
            self.any.store(false, Ordering::Release);
        }
        if terminal {
            self.ended.store(true, Ordering::Release);
            guard.list.clear();
        }
    }

    /// Publishes the terminal item unless one was published already.
    pub(crate) fn end(&self, outcome: Outcome) {
        if !self.ended.load(Ordering::Acquire) {
            if self.has_subscribers() {
                self.publish(StreamItem::End(outcome));
            }
            self.ended.store(true, Ordering::Release);
        }
    }
}

/// A subscription to a run's stream; a [`futures_core::Stream`] of [`StreamItem`]s that ends
/// after the terminal [`StreamItem::End`].
///
/// Get one from `Handler::events` or `Handler::subscribe`. Dropping it never affects the run.
#[derive(Debug)]
pub struct EventStream {
    subscriber: Arc<Subscriber>,
}

impl EventStream {
    /// How many items this subscriber lost because its buffer was full.
    pub fn lagged(&self) -> u64 {
        lock(&self.subscriber.buffer).lagged
    }
}

impl Stream for EventStream {
    type Item = StreamItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<StreamItem>> {
        let mut buffer = lock(&self.subscriber.buffer);
        if let Some(item) = buffer.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if buffer.ended {
            return Poll::Ready(None);
        }
        buffer.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Locks a mutex, ignoring poisoning: the data under our locks stays consistent across a panic
/// because no lock is held while user code runs.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn drain(mut stream: EventStream) -> Vec<StreamItem> {
        let mut items = Vec::new();
        futures_util::FutureExt::now_or_never(async {
            while let Some(item) = stream.next().await {
                items.push(item);
            }
        })
        .expect("an ended stream never waits");
        items
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Tick(u32);
    impl crate::Event for Tick {
        const NAME: &'static str = "stream::tests::Tick";
    }

    #[test]
    fn a_reserved_stream_taken_late_still_sees_the_run_from_its_start() {
        let publisher = Publisher::new(8);
        publisher.reserve();
        assert!(publisher.has_subscribers());
        publisher.publish(StreamItem::Event(DynEvent::new(Tick(1))));
        publisher.end(Outcome::Stopped);
        let items = drain(publisher.take_reserved());
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].event::<Tick>(), Some(&Tick(1)));
        assert!(matches!(items[1], StreamItem::End(Outcome::Stopped)));
        // Taken once: the next stream starts after the end, empty.
        assert!(drain(publisher.take_reserved()).is_empty());
    }

    #[test]
    fn a_reserved_stream_of_a_run_that_published_nothing_holds_only_its_end() {
        let publisher = Publisher::new(8);
        publisher.reserve();
        publisher.end(Outcome::Failed("boom".into()));
        let items = drain(publisher.take_reserved());
        assert!(matches!(&items[..], [StreamItem::End(Outcome::Failed(m))] if m == "boom"));
    }

    #[test]
    fn a_released_reservation_stops_the_buffering() {
        let publisher = Publisher::new(8);
        publisher.reserve();
        publisher.release_reserved();
        assert!(!publisher.has_subscribers());
        let late = publisher.subscribe();
        publisher.publish(StreamItem::Event(DynEvent::new(Tick(2))));
        publisher.end(Outcome::Stopped);
        assert_eq!(drain(late).len(), 2);
    }
}
