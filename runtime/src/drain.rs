//! A shard-local, one-shot broadcast: "this shard is draining". Idle keep-alive connections
//! wait on it next to their socket so a graceful shutdown closes them at once.
//!
//! Shard-local (`Cell`/`RefCell`, never `Send`): firing it and waiting on it touch only this
//! core's memory. Waiters register in a slab and deregister on drop, so connections that never
//! see the signal leave nothing behind.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct DrainSignal {
    fired: Cell<bool>,
    waiters: RefCell<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl DrainSignal {
    /// Fires the signal: every current and future waiter completes.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = {
            let mut waiters = self.waiters.borrow_mut();
            waiters.free.clear();
            waiters.slots.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Completes when the signal fires.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            signal: self,
            slot: None,
        }
    }
}

#[derive(Debug)]
pub struct DrainWait<'a> {
    signal: &'a DrainSignal,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.slot {
            Some(slot) => {
                if let Some(entry) = waiters.slots.get_mut(slot) {
                    *entry = Some(cx.waker().clone());
                }
            }
            None => {
                let slot = match waiters.free.pop() {
                    Some(slot) => slot,
                    None => {
                        waiters.slots.push(None);
                        waiters.slots.len() - 1
                    }
                };
                if let Some(entry) = waiters.slots.get_mut(slot) {
                    *entry = Some(cx.waker().clone());
                }
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot
            && !self.signal.fired.get()
        {
            let mut waiters = self.signal.waiters.borrow_mut();
            if let Some(entry) = waiters.slots.get_mut(slot) {
                *entry = None;
                waiters.free.push(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn waiters_wake_on_fire_and_slots_are_reused() {
        let signal = DrainSignal::default();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        {
            let mut a = std::pin::pin!(signal.wait());
            assert!(a.as_mut().poll(&mut cx).is_pending());
        }
        let mut b = std::pin::pin!(signal.wait());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            signal.waiters.borrow().slots.len(),
            1,
            "dropped waiter's slot reused"
        );
        signal.fire();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(b.as_mut().poll(&mut cx).is_ready());
        assert!(std::pin::pin!(signal.wait()).poll(&mut cx).is_ready());
    }
}
