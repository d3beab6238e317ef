// SPDX-License-Identifier: GPL-2.0

//! Vector operations the 6.12 `kernel::alloc::Vec` lacks: removing one
//! element by swapping the last one in, and shortening. Both are safe for
//! every element type (a removed element is moved out once; a truncated
//! tail is dropped in place once), so drivers need no `set_len`.

use kernel::alloc::{Allocator, Vec};

/// [`Vec`] operations of `alloc::vec::Vec` missing from the kernel's.
pub(crate) trait VecExt<T> {
    /// Removes the element at `i` and puts the last element in its place
    /// (`Vec::swap_remove`); `None` if `i` is out of bounds.
    fn swap_remove(&mut self, i: usize) -> Option<T>;

    /// Drops every element from `len` on (`Vec::truncate`); nothing if the
    /// vector is not longer than `len`.
    fn truncate(&mut self, len: usize);

    /// Drops every element (`Vec::clear`); the capacity stays.
    fn clear(&mut self) {
        self.truncate(0);
    }
}

impl<T, A: Allocator> VecExt<T> for Vec<T, A> {
    fn swap_remove(&mut self, i: usize) -> Option<T> {
        let last = self.len().checked_sub(1)?;
        if i > last {
            return None;
        }
        self.swap(i, last);
        // SAFETY: `last < len`, so the element there is initialised. The
        // length is shrunk past it before anything else can see the vector,
        // so the value is moved out exactly once and the vector never drops
        // it.
        let v = unsafe { core::ptr::read(self.as_ptr().add(last)) };
        // SAFETY: shrinking: `last` is below the capacity.
        unsafe { self.set_len(last) };
        Some(v)
    }

    fn truncate(&mut self, len: usize) {
        let old = self.len();
        if len >= old {
            return;
        }
        // SAFETY: `len < old <= capacity`, so the elements `[len, old)` are
        // initialised and within the allocation. The length is shrunk first,
        // so a panic in a destructor leaks the rest rather than dropping an
        // element twice; each element of the tail is dropped once.
        unsafe {
            self.set_len(len);
            let tail = core::ptr::slice_from_raw_parts_mut(self.as_mut_ptr().add(len), old - len);
            core::ptr::drop_in_place(tail);
        }
    }
}
