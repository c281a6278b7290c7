//! A session's control mailbox: how the hub tells one session to unsubscribe,
//! disconnect or forget a dropped channel.
//!
//! Unbounded and many-to-one, like `tokio::sync::mpsc::unbounded_channel`, but
//! it allocates nothing until the first message. Every hub session has one for
//! its whole life and almost never receives anything, and tokio's channel
//! allocates a block of 32 slots up front: about 2.2 KiB per session, a
//! quarter of an idle hub session's memory. Here an empty mailbox is one
//! `Arc` of about 100 bytes (a lock, an empty `VecDeque` and a [`Notify`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug)]
struct Inner<T> {
    state: Mutex<State<T>>,
    notify: Notify,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// The receiver is gone: sends fail.
    closed: bool,
}

impl<T> Inner<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock is held cannot leave the state half-changed
        // (push_back, pop_front, a flag), so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates a mailbox: the senders (cheap to clone) and its one receiver.
pub(crate) fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
        }),
        notify: Notify::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

/// The sending side; clones send to the same receiver.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Sender<T> {
    /// Queues `msg`; gives it back if the receiver has been dropped.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        {
            // One lock for the flag and the queue: the receiver's drop sets
            // `closed` and drains under it, so a message is never left behind
            // unreported.
            let mut state = self.inner.state();
            if state.closed {
                return Err(msg);
            }
            state.queue.push_back(msg);
        }
        // Stores a permit if the receiver is not waiting yet, so the wake
        // cannot fall between its check of the queue and its wait.
        self.inner.notify.notify_one();
        Ok(())
    }
}

/// The receiving side.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// The next message, in the order sent; waits while there is none.
    ///
    /// Cancel-safe: dropping the future loses no message (messages stay
    /// queued until a call returns them), so it can be a `select!` branch.
    /// It never ends on its own, even when every sender is gone: the
    /// session that owns the receiver also holds a sender.
    pub(crate) async fn recv(&mut self) -> T {
        loop {
            if let Some(msg) = self.inner.state().queue.pop_front() {
                return msg;
            }
            self.inner.notify.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        state.closed = true;
        state.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};

    use super::*;

    #[test]
    fn an_empty_mailbox_allocates_no_queue() {
        let (tx, rx) = mailbox::<String>();
        assert_eq!(tx.inner.state().queue.capacity(), 0);
        drop(rx);
    }

    #[tokio::test]
    async fn delivers_in_order_from_every_sender() {
        let (tx, mut rx) = mailbox();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        tx.send(3).unwrap();
        assert_eq!(rx.recv().await, 1);
        assert_eq!(rx.recv().await, 2);
        assert_eq!(rx.recv().await, 3);
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver() {
        let (tx, mut rx) = mailbox();
        let waiter = tokio::spawn(async move { rx.recv().await });
        // The test runtime has one thread: this lets the waiter run until it
        // waits on the empty mailbox.
        tokio::task::yield_now().await;
        tx.send("hello").unwrap();
        assert_eq!(waiter.await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = mailbox();
        // A recv that is polled, notified and then dropped unfinished, as a
        // losing `select!` branch is.
        {
            let recv = rx.recv();
            tokio::pin!(recv);
            let mut cx = Context::from_waker(Waker::noop());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            tx.send(7).unwrap();
        }
        tx.send(8).unwrap();
        assert_eq!(rx.recv().await, 7);
        assert_eq!(rx.recv().await, 8);
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone() {
        let (tx, rx) = mailbox();
        tx.send(1).unwrap();
        drop(rx);
        assert_eq!(tx.send(2), Err(2));
        assert!(
            tx.inner.state().queue.is_empty(),
            "the receiver's drop drains the queue"
        );
    }

    #[test]
    fn many_threads_send_and_every_message_arrives() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (tx, mut rx) = mailbox();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        tx.send((t, i)).unwrap();
                    }
                })
            })
            .collect();
        let got = rt.block_on(async move {
            let mut next = [0; 4];
            for _ in 0..20_000 {
                let (t, i) = rx.recv().await;
                assert_eq!(i, next[t], "sender {t}'s messages out of order");
                next[t] += 1;
            }
            next
        });
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(got, [5_000; 4]);
    }
}
