//! One allocation for the futures of all the requests of an HTTP/1 connection.
//!
//! hyper keeps a request's future in its connection and, to hand the socket back (parking,
//! `version`), wants it `Unpin`, so the future is boxed. A request's future is ~3.5 KB: too
//! large for glibc's per-thread cache, so a new box for every request went through the
//! allocator's slow path twice (malloc and free). An HTTP/1 connection serves one request at a
//! time, so the box comes home when its request is done and the next request's future is
//! written into it. A parked connection lets it go ([`Home::release`]), so an idle connection
//! holds no request memory; an HTTP/2 connection, which runs its requests side by side, boxes
//! each one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

/// What a connection keeps between requests, let go when it parks.
pub trait Spare: Send + Sync {
    fn release(&self);
}

/// Where a connection's request box waits for the next request.
pub struct Home<F>(Mutex<Option<Pin<Box<Option<F>>>>>);

impl<F: Future> Home<F> {
    pub fn new() -> Arc<Home<F>> {
        Arc::new(Home(Mutex::new(None)))
    }

    /// `future`, boxed in the connection's box when it is home (`reuse`: an HTTP/1 request),
    /// else in a new one, which then comes home only if `reuse`.
    #[inline(always)]
    pub fn place(self: &Arc<Self>, future: F, reuse: bool) -> Housed<F> {
        let spare = if reuse { self.take() } else { None };
        let slot = match spare {
            Some(mut slot) => {
                slot.set(Some(future));
                slot
            }
            None => Box::pin(Some(future)),
        };
        Housed {
            slot: Some(slot),
            home: reuse.then(|| Arc::clone(self)),
        }
    }
}

impl<F> Home<F> {
    fn take(&self) -> Option<Pin<Box<Option<F>>>> {
        self.0.lock().ok()?.take()
    }

    fn give_back(&self, slot: Pin<Box<Option<F>>>) {
        if let Ok(mut home) = self.0.lock()
            && home.is_none()
        {
            *home = Some(slot);
        }
    }

    #[cfg(test)]
    fn is_occupied(&self) -> bool {
        self.0.lock().map(|home| home.is_some()).unwrap_or(false)
    }
}

impl<F: Send> Spare for Home<F> {
    fn release(&self) {
        if let Ok(mut home) = self.0.lock() {
            *home = None;
        }
    }
}

/// A request's future in its box. Polling it again after it is done finds nothing to run
/// (hyper never does).
pub struct Housed<F> {
    slot: Option<Pin<Box<Option<F>>>>,
    home: Option<Arc<Home<F>>>,
}

impl<F: Future> Future for Housed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(slot) = this.slot.as_mut() else {
            return Poll::Pending;
        };
        let Some(future) = slot.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let output = ready!(future.poll(cx));
        // What the request held goes now, not when the next request takes the box.
        slot.set(None);
        Poll::Ready(output)
    }
}

impl<F> Drop for Housed<F> {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        // A request dropped before its end (the client left) lets go of what it held here too.
        slot.set(None);
        if let Some(home) = &self.home {
            home.give_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn address<F>(housed: &Housed<F>) -> usize {
        housed
            .slot
            .as_ref()
            .map_or(0, |slot| &**slot as *const Option<F> as usize)
    }

    fn run<F: Future + Unpin>(mut future: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the test futures finish at once"),
        }
    }

    #[test]
    fn an_http1_request_runs_in_the_box_of_the_one_before_it() {
        let home = Home::new();
        let mut addresses = Vec::new();
        for _ in 0..3 {
            let housed = home.place(std::future::ready(()), true);
            addresses.push(address(&housed));
            assert!(!home.is_occupied(), "the box is out with its request");
            run(housed);
            assert!(home.is_occupied(), "the box came home");
        }
        assert!(
            addresses.iter().all(|a| *a == addresses[0]),
            "{addresses:?}"
        );
    }

    #[test]
    fn a_request_dropped_unfinished_lets_go_of_its_state_and_returns_the_box() {
        let state = Arc::new(());
        let home = Home::new();
        let holder = Arc::clone(&state);
        let housed = home.place(
            async move {
                let _held = holder;
                std::future::pending::<()>().await;
            },
            true,
        );
        assert_eq!(Arc::strong_count(&state), 2);
        drop(housed);
        assert_eq!(Arc::strong_count(&state), 1, "the request's state is gone");
        assert!(home.is_occupied());
        home.release();
        assert!(!home.is_occupied(), "a parked connection keeps no box");
    }

    #[test]
    fn http2_requests_get_boxes_of_their_own() {
        let home = Home::new();
        run(home.place(std::future::ready(()), false));
        assert!(!home.is_occupied());
    }

    #[test]
    fn a_finished_request_holds_nothing_while_hyper_keeps_it() {
        let state = Arc::new(());
        let home = Home::new();
        let holder = Arc::clone(&state);
        let mut housed = home.place(
            async move {
                let _held = holder;
            },
            true,
        );
        run(&mut housed);
        assert_eq!(Arc::strong_count(&state), 1);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut housed).poll(&mut cx).is_pending());
    }
}
