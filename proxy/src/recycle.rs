//! A box for a future whose memory is kept by the thread for the next future of its layout.
//!
//! A request's future on switchback's HTTP/1.1 path is boxed, so that an idle keep-alive
//! connection does not hold room for it; [`Recycled`] boxes it without a heap allocation per
//! request once the thread is warm. A block freed on another thread than the one that took it
//! joins that thread's list: the global allocator lets any thread free any block.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks a thread keeps per layout at most; more are given back to the allocator.
const KEPT: usize = 64;

/// A thread's free blocks, by layout.
struct Blocks(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, blocks) in &self.0 {
            for block in blocks {
                // SAFETY: each block was allocated with `layout` and is no longer in use.
                unsafe { std::alloc::dealloc(block.as_ptr(), *layout) };
            }
        }
    }
}

thread_local! {
    static BLOCKS: RefCell<Blocks> = const { RefCell::new(Blocks(Vec::new())) };
}

fn take_block(layout: Layout) -> NonNull<u8> {
    let kept = BLOCKS
        .try_with(|b| {
            let mut b = b.borrow_mut();
            b.0.iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, blocks)| blocks.pop())
        })
        .ok()
        .flatten();
    kept.unwrap_or_else(|| {
        // SAFETY: the layout is not zero-sized (checked by the caller).
        let block = unsafe { std::alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    })
}

fn give_block(layout: Layout, block: NonNull<u8>) {
    let kept = BLOCKS.try_with(|b| {
        let mut b = b.borrow_mut();
        let at = match b.0.iter().position(|(l, _)| *l == layout) {
            Some(at) => at,
            None => {
                b.0.push((layout, Vec::with_capacity(KEPT)));
                b.0.len() - 1
            }
        };
        let blocks = &mut b.0[at].1;
        if blocks.len() < KEPT {
            blocks.push(block);
            true
        } else {
            false
        }
    });
    if !matches!(kept, Ok(true)) {
        // SAFETY: the block was allocated with `layout` and is no longer in use.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

/// A boxed future, its block recycled when it is dropped.
pub struct Recycled<F: Future> {
    /// The future's block (dangling for a zero-sized future, which needs none).
    block: NonNull<F>,
}

// SAFETY: a Recycled owns its future as a Box would; the block lists are per thread.
unsafe impl<F: Future + Send> Send for Recycled<F> {}

impl<F: Future> Recycled<F> {
    pub fn new(future: F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            take_block(layout).cast::<F>()
        };
        // SAFETY: the block is fresh or free, and sized and aligned for F (any aligned pointer
        // is, for a zero-sized F).
        unsafe { block.as_ptr().write(future) };
        Recycled { block }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future is never moved out of its block until it is dropped in place.
        unsafe { Pin::new_unchecked(&mut *self.block.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live F, dropped here once; then the block is free.
        unsafe { std::ptr::drop_in_place(self.block.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() > 0 {
            give_block(layout, self.block.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    async fn work(held: Rc<()>, byte: u8) -> [u8; 300] {
        tokio::task::yield_now().await;
        let _held = held;
        [byte; 300]
    }

    #[tokio::test]
    async fn a_recycled_future_runs_is_dropped_once_and_its_block_is_reused() {
        let dropped = Rc::new(());
        let first = {
            let future = Recycled::new(work(dropped.clone(), 7));
            let block = future.block.as_ptr() as usize;
            assert_eq!(future.await[299], 7);
            block
        };
        assert_eq!(
            Rc::strong_count(&dropped),
            1,
            "the future's state was dropped"
        );
        // The next future of the layout takes the freed block.
        let second = Recycled::new(work(dropped.clone(), 8));
        assert_eq!(second.block.as_ptr() as usize, first);
        // Dropped before it finished: its state is dropped all the same.
        drop(second);
        assert_eq!(Rc::strong_count(&dropped), 1);
        assert_eq!(Recycled::new(async { 5 }).await, 5);
    }
}
