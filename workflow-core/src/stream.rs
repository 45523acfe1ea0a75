//! The run's event stream: progress events written by steps, step activity, and one terminal
//! outcome, delivered to any number of subscribers.
//!
//! Policy for a slow consumer: each subscriber has its own bounded buffer
//! ([`DEFAULT_STREAM_CAPACITY`] items unless the runner says otherwise). When it is full, the
//! oldest item is dropped and the subscriber's [`EventStream::lagged`] count grows; the run
//! never waits for a consumer. The terminal item is never dropped, and a subscriber that goes
//! away is simply forgotten: it never stops the run.
//!
//! History: the run also keeps its last items (as many as one subscriber's buffer) and its
//! terminal item, each numbered from 0, so a subscriber that comes late can ask for everything
//! still held, or for what came after a number it saw, and always gets the end.

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
    /// An item of a child run (started by a step with `ctx.run_child`), or of a child's child:
    /// `path` leads from this run down to the run that published `item`, which is never
    /// itself a `Child`. A child's `End` ends the child, not this stream.
    Child {
        /// The runs from this run's child down to the one that published the item.
        path: Arc<[ChildId]>,
        /// What that run published.
        item: Box<StreamItem>,
    },
}

/// Where a child run sits: the step of its parent that started it, its workflow, its run id.
/// A [`StreamItem::Child`] names a child run with a path of these.
///
/// ```
/// use tidewater::ChildId;
/// let id = ChildId { step: "plan", workflow: "Research", run_id: 7 };
/// assert_eq!(id.to_string(), "plan/Research#7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildId {
    /// The step of the parent run that started the child.
    pub step: &'static str,
    /// The child's workflow.
    pub workflow: &'static str,
    /// The child's run id.
    pub run_id: crate::RunId,
}

impl std::fmt::Display for ChildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.step, self.workflow, self.run_id)
    }
}

impl StreamItem {
    /// Is this the run's last item?
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamItem::End(_))
    }

    /// The event a step wrote, if this is one and it is an `E`. Items of child runs are not
    /// looked into: see [`StreamItem::child`].
    pub fn event<E: crate::Event>(&self) -> Option<&E> {
        match self {
            StreamItem::Event(event) => event.downcast_ref(),
            _ => None,
        }
    }

    /// For an item of a child run: the path to that run and what it published; `None` for an
    /// item of this run.
    ///
    /// ```
    /// use tidewater::{ChildId, Outcome, StreamItem};
    /// let id = ChildId { step: "plan", workflow: "Research", run_id: 7 };
    /// let item = StreamItem::Child { path: [id].into(), item: Box::new(StreamItem::End(Outcome::Stopped)) };
    /// let (path, inner) = item.child().unwrap();
    /// assert_eq!(path, [id]);
    /// assert!(inner.is_terminal() && !item.is_terminal());
    /// ```
    pub fn child(&self) -> Option<(&[ChildId], &StreamItem)> {
        match self {
            StreamItem::Child { path, item } => Some((path, item)),
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

/// Where a late subscription starts (see `Handler::subscribe_from`).
///
/// ```
/// use tidewater::Since;
/// assert_ne!(Since::Start, Since::After(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Everything the run's history still holds, from its first item.
    Start,
    /// The items after the one numbered `n` (items are numbered from 0 in publishing order).
    After(u64),
    /// Only what comes from now on.
    Now,
}

#[derive(Debug)]
struct Buffer {
    items: VecDeque<(u64, StreamItem)>,
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
    /// A child run's stream goes to its parent's, marked with the child's place.
    forward: Option<Box<Forward>>,
    subscribers: Mutex<Subscribers>,
    /// Can anyone read what is published? A handler exists, or a subscription does.
    open: AtomicBool,
    ended: AtomicBool,
    capacity: u32,
}

#[derive(Debug, Default)]
struct Subscribers {
    /// The subscriptions and the history, made at the first item published before the end or
    /// the first subscription: a run nobody reads that publishes nothing but its end (a
    /// parked run, most runs awaited for their output) has neither.
    lists: Option<Box<Lists>>,
    /// The handler's own stream, which sees the run from its very start.
    reserved: Reserved,
    /// The number the next item gets.
    next: u64,
    /// The terminal item's number and outcome, once published: never dropped.
    end: Option<(u64, Outcome)>,
    /// The run's handler exists (so someone may subscribe later).
    handler: bool,
}

#[derive(Debug, Default)]
struct Lists {
    list: Vec<Weak<Subscriber>>,
    /// The last `capacity` items published (the terminal one is kept apart, in `end`), for
    /// late subscribers.
    history: VecDeque<(u64, StreamItem)>,
}

impl Subscribers {
    fn lists(&mut self) -> &mut Lists {
        self.lists.get_or_insert_with(Box::default)
    }

    fn has_list(&self) -> bool {
        self.lists.as_ref().is_some_and(|l| !l.list.is_empty())
    }
}

/// The handler's stream is made lazily: a run nobody reads (a parked run, most runs awaited
/// for their output) never pays for a subscriber, yet `Handler::events` still misses nothing
/// (it starts from the history).
#[derive(Debug, Default)]
enum Reserved {
    /// No reservation, or the handler took its stream.
    #[default]
    None,
    /// Reserved and not taken yet: taking it replays the history from the start.
    Pending,
}

/// Where a child run's stream items go: its parent's stream.
pub(crate) struct Forward {
    pub(crate) parent: Arc<dyn Upstream>,
    /// The child's own place, as the path of the items it publishes itself.
    pub(crate) path: Arc<[ChildId]>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward").field("path", &self.path).finish()
    }
}

/// A parent run, seen by its child without its type: its stream.
pub(crate) trait Upstream: Send + Sync {
    fn publisher(&self) -> &Publisher;
}

impl Publisher {
    /// The stream of a child run: what it publishes goes to its parent's stream.
    pub(crate) fn child(capacity: usize, forward: Forward) -> Publisher {
        Publisher {
            forward: Some(Box::new(forward)),
            ..Publisher::new(capacity)
        }
    }

    pub(crate) fn new(capacity: usize) -> Publisher {
        Publisher {
            forward: None,
            subscribers: Mutex::new(Subscribers::default()),
            open: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            capacity: capacity.clamp(1, u32::MAX as usize) as u32,
        }
    }

    /// Can anyone read an item? The run checks it before building one. While a handler
    /// exists every item goes to the history, subscribed or not; a run without a handler
    /// (`Runner::run`) builds none.
    pub(crate) fn has_subscribers(&self) -> bool {
        match &self.forward {
            None => self.open.load(Ordering::Acquire),
            Some(forward) => {
                !self.ended.load(Ordering::Acquire) && forward.parent.publisher().has_subscribers()
            }
        }
    }

    fn update_open(&self, subscribers: &Subscribers) {
        let open = subscribers.end.is_none() && (subscribers.handler || subscribers.has_list());
        self.open.store(open, Ordering::Release);
    }

    fn new_subscriber(&self) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            buffer: Mutex::new(Buffer {
                items: VecDeque::new(),
                lagged: 0,
                ended: false,
                waker: None,
            }),
            capacity: self.capacity as usize,
        })
    }

    /// A subscription from now on; after the end, the terminal item alone.
    pub(crate) fn subscribe(&self) -> EventStream {
        self.subscribe_from(Since::Now)
    }

    /// A subscription replaying the history from `since`, then live. Items older than the
    /// history holds are counted in [`EventStream::lagged`]; the terminal item always comes.
    pub(crate) fn subscribe_from(&self, since: Since) -> EventStream {
        let mut subscribers = lock(&self.subscribers);
        self.subscribe_locked(&mut subscribers, since)
    }

    fn subscribe_locked(&self, subscribers: &mut Subscribers, since: Since) -> EventStream {
        let subscriber = self.new_subscriber();
        let first = match since {
            Since::Start => 0,
            Since::After(n) => n.saturating_add(1),
            Since::Now => subscribers.next,
        };
        {
            let mut buffer = lock(&subscriber.buffer);
            let history = subscribers.lists.as_ref().map(|l| &l.history);
            let oldest = history
                .and_then(VecDeque::front)
                .map_or(subscribers.next, |(seq, _)| *seq);
            let end_seq = subscribers.end.as_ref().map(|(seq, _)| *seq);
            let published = end_seq.unwrap_or(subscribers.next);
            buffer.lagged = oldest.min(published).saturating_sub(first);
            if let Some(history) = history {
                buffer
                    .items
                    .extend(history.iter().filter(|(seq, _)| *seq >= first).cloned());
            }
            if let Some((seq, outcome)) = &subscribers.end {
                buffer
                    .items
                    .push_back((*seq, StreamItem::End(outcome.clone())));
                buffer.ended = true;
            }
        }
        if subscribers.end.is_none() {
            subscribers.lists().list.push(Arc::downgrade(&subscriber));
        }
        self.update_open(subscribers);
        EventStream {
            subscriber,
            last: None,
        }
    }

    /// Reserves the handler's stream from the run's start (see [`Reserved`]); before the run
    /// publishes anything.
    pub(crate) fn reserve(&self) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.reserved = Reserved::Pending;
        subscribers.handler = true;
        self.update_open(&subscribers);
    }

    /// The reserved stream, from the run's start; a fresh subscription once it was taken.
    pub(crate) fn take_reserved(&self) -> EventStream {
        let mut subscribers = lock(&self.subscribers);
        match std::mem::take(&mut subscribers.reserved) {
            Reserved::Pending => self.subscribe_locked(&mut subscribers, Since::Start),
            Reserved::None => self.subscribe_locked(&mut subscribers, Since::Now),
        }
    }

    /// The handler went away without taking its stream: nobody will read it.
    pub(crate) fn release_reserved(&self) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.reserved = Reserved::None;
        subscribers.handler = false;
        if let Some(lists) = &mut subscribers.lists {
            lists.list.retain(|weak| weak.strong_count() > 0);
        }
        self.update_open(&subscribers);
    }

    pub(crate) fn publish(&self, item: StreamItem) {
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        if let Some(forward) = &self.forward {
            // A child has no subscribers of its own: its items go to its parent's stream,
            // its end included (which ends the child, not the parent's stream).
            if item.is_terminal() && self.ended.swap(true, Ordering::AcqRel) {
                return;
            }
            let parent = forward.parent.publisher();
            if parent.has_subscribers() {
                parent.publish(match item {
                    StreamItem::Child { path, item } => StreamItem::Child {
                        path: forward.path.iter().chain(path.iter()).copied().collect(),
                        item,
                    },
                    item => StreamItem::Child {
                        path: forward.path.clone(),
                        item: Box::new(item),
                    },
                });
            }
            return;
        }
        let terminal = item.is_terminal();
        let mut guard = lock(&self.subscribers);
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        let subscribers = &mut *guard;
        let seq = subscribers.next;
        subscribers.next += 1;
        match &item {
            StreamItem::End(outcome) => subscribers.end = Some((seq, outcome.clone())),
            _ => {
                let history = &mut subscribers.lists().history;
                if history.len() >= self.capacity as usize {
                    history.pop_front();
                }
                history.push_back((seq, item.clone()));
            }
        }
        let empty = &mut Vec::new();
        let list = match &mut subscribers.lists {
            Some(lists) => &mut lists.list,
            None => empty,
        };
        list.retain(|weak| {
            let Some(subscriber) = weak.upgrade() else {
                return false;
            };
            let mut buffer = lock(&subscriber.buffer);
            if buffer.items.len() >= subscriber.capacity {
                buffer.items.pop_front();
                buffer.lagged += 1;
            }
            buffer.items.push_back((seq, item.clone()));
            buffer.ended |= terminal;
            if let Some(waker) = buffer.waker.take() {
                waker.wake();
            }
            true
        });
        if terminal {
            self.ended.store(true, Ordering::Release);
            if let Some(lists) = &mut subscribers.lists {
                lists.list.clear();
            }
        }
        self.update_open(subscribers);
    }

    /// Publishes the terminal item unless one was published already.
    pub(crate) fn end(&self, outcome: Outcome) {
        self.publish(StreamItem::End(outcome));
    }
}

/// A subscription to a run's stream; a [`futures_core::Stream`] of [`StreamItem`]s that ends
/// after the terminal [`StreamItem::End`].
///
/// Get one from `Handler::events`, `Handler::subscribe` or `Handler::subscribe_from`. Dropping
/// it never affects the run.
#[derive(Debug)]
pub struct EventStream {
    subscriber: Arc<Subscriber>,
    last: Option<u64>,
}

impl EventStream {
    /// How many items this subscriber lost: dropped because its buffer was full, or older
    /// than the run's history when it subscribed.
    pub fn lagged(&self) -> u64 {
        lock(&self.subscriber.buffer).lagged
    }

    /// The number of the last item this stream yielded (items are numbered from 0 in the
    /// order the run published them), to resume from with `Handler::subscribe_from`.
    pub fn last_sequence(&self) -> Option<u64> {
        self.last
    }
}

impl Stream for EventStream {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<StreamItem>> {
        let mut buffer = lock(&self.subscriber.buffer);
        if let Some((seq, item)) = buffer.items.pop_front() {
            drop(buffer);
            self.last = Some(seq);
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
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        // Taken once: the next stream starts now, after the end: it holds the end alone.
        let again = drain(publisher.take_reserved());
        assert!(matches!(&again[..], [StreamItem::End(Outcome::Stopped)]));
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

    fn ticks(items: &[StreamItem]) -> Vec<u32> {
        items
            .iter()
            .filter_map(|i| i.event::<Tick>().map(|t| t.0))
            .collect()
    }

    #[test]
    fn a_late_subscriber_replays_the_history_from_a_cursor_and_always_gets_the_end() {
        let publisher = Publisher::new(4);
        publisher.reserve();
        for n in 0..6 {
            publisher.publish(StreamItem::Event(DynEvent::new(Tick(n))));
        }
        // The history holds the last 4 (numbers 2..=5); 0 and 1 are counted as lagged.
        let mut all = publisher.subscribe_from(Since::Start);
        assert_eq!(all.lagged(), 2);
        let mut from = publisher.subscribe_from(Since::After(3));
        assert_eq!(from.lagged(), 0);
        let now = publisher.subscribe_from(Since::Now);
        publisher.publish(StreamItem::Event(DynEvent::new(Tick(6))));
        publisher.end(Outcome::Cancelled);
        // After the end: the history and the end, whoever asks.
        let after_end = publisher.subscribe_from(Since::After(5));
        let nothing_left = publisher.subscribe();

        let mut first = Vec::new();
        futures_util::FutureExt::now_or_never(async {
            while let Some(item) = all.next().await {
                first.push((all.last_sequence(), item));
            }
        })
        .unwrap();
        let seqs: Vec<_> = first.iter().map(|(s, _)| s.unwrap()).collect();
        // Unread, its buffer (4 items) overflowed with the two live items: 2 more dropped.
        assert_eq!(seqs, vec![4, 5, 6, 7]);
        assert_eq!(all.lagged(), 4);
        assert!(matches!(first[3].1, StreamItem::End(Outcome::Cancelled)));
        let items: Vec<StreamItem> = futures_util::FutureExt::now_or_never(async {
            let mut v = Vec::new();
            while let Some(i) = from.next().await {
                v.push(i);
            }
            v
        })
        .unwrap();
        assert_eq!(ticks(&items), vec![4, 5, 6]);
        assert_eq!(from.last_sequence(), Some(7));
        let now = drain(now);
        assert_eq!(ticks(&now), vec![6]);
        assert_eq!(now.len(), 2);
        let after_end = drain(after_end);
        assert_eq!(ticks(&after_end), vec![6]);
        assert!(matches!(
            after_end.last(),
            Some(StreamItem::End(Outcome::Cancelled))
        ));
        assert!(matches!(
            &drain(nothing_left)[..],
            [StreamItem::End(Outcome::Cancelled)]
        ));
    }

    #[test]
    fn a_run_without_a_handler_builds_no_items() {
        let publisher = Publisher::new(4);
        assert!(!publisher.has_subscribers());
        publisher.reserve();
        assert!(publisher.has_subscribers());
        publisher.end(Outcome::Stopped);
        assert!(
            !publisher.has_subscribers(),
            "nothing is published after the end"
        );
    }
}
