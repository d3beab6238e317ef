// SPDX-License-Identifier: GPL-2.0

//! An ordered map from `u64` keys to values on the kernel's red-black tree
//! (`lib/rbtree.c`), with the neighbour lookups of an IOVA map made in one
//! descent.
//!
//! C header: [`include/linux/rbtree.h`](srctree/include/linux/rbtree.h).
//!
//! The 6.12 `kernel::rbtree::RBTree` finds "the first key `>= k`" and then
//! steps to a neighbour with `rb_prev`/`rb_next` (or `rb_last` when there
//! is none): the pair an overlap lookup needs, the greatest key `<= k` and
//! the smallest key `> k`, costs a descent and one or two more calls, and
//! removing by key a second search. [`RbMap::around`] finds both in one
//! descent, as `vfio_find_dma()` finds an overlapping mapping in one, and
//! [`RbMap::remove_then_next`] unlinks a node and returns its successor
//! from the same search (the C unmap loop's `rb_next()` before
//! `vfio_remove_dma()`).
//!
//! A node's memory is allocated ahead ([`RbSlot`]), so inserting cannot
//! fail and may happen under a lock; a removal hands the memory back, so
//! an owner can keep a few nodes for the next insertions.

use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr;
use kernel::alloc::{Flags, KBox};
use kernel::bindings;
use kernel::prelude::*;

/// One element. `links` comes first and the layout is C's, so a pointer
/// to a node's `rb_node` is a pointer to the node.
#[repr(C)]
struct Node<V> {
    links: bindings::rb_node,
    key: u64,
    value: V,
}

/// The memory of one node: allocated, holding no value, in no tree.
pub(crate) struct RbSlot<V>(KBox<MaybeUninit<Node<V>>>);

// SAFETY: a slot is memory that nothing else references (its links are
// not in any tree): sending it sends at most a `V` (none, in fact).
unsafe impl<V: Send> Send for RbSlot<V> {}

impl<V> RbSlot<V> {
    /// Allocates the memory of one node.
    pub(crate) fn new(flags: Flags) -> Result<Self> {
        Ok(RbSlot(KBox::new_uninit(flags)?))
    }
}

/// An entry found by a lookup: its key and value.
pub(crate) type RbEntry<'a, V> = (u64, &'a V);

/// An entry handed back: its node memory and its value (by a removal, or
/// by an insertion whose key is taken).
pub(crate) type RbRemoved<V> = (RbSlot<V>, V);

/// A map from `u64` to `V`, ordered by key.
///
/// # Invariants
///
/// `root` is a valid red-black tree whose nodes are ordered by `key`, with
/// no key twice. Each of its `rb_node`s is the `links` field of an
/// initialised `Node<V>` that was allocated as a `KBox<Node<V>>`, turned
/// into a raw pointer, and is owned by this map alone.
pub(crate) struct RbMap<V> {
    root: bindings::rb_root,
    _owns: PhantomData<KBox<Node<V>>>,
}

// SAFETY: the map owns its nodes and shares them with nobody: sending the
// map sends its values.
unsafe impl<V: Send> Send for RbMap<V> {}
// SAFETY: a shared map gives out only shared references to its values.
unsafe impl<V: Sync> Sync for RbMap<V> {}

impl<V> RbMap<V> {
    /// An empty map.
    pub(crate) const fn new() -> Self {
        // INVARIANT: the empty tree.
        RbMap { root: bindings::rb_root { rb_node: ptr::null_mut() }, _owns: PhantomData }
    }

    /// The key of the node whose links are `n`.
    ///
    /// # Safety
    ///
    /// `n` is a non-null node of this map's tree.
    #[inline]
    unsafe fn key_of(n: *mut bindings::rb_node) -> u64 {
        // SAFETY: by the type invariant `n` is the first field of a live,
        // initialised `Node<V>` at the same address.
        unsafe { (*n.cast::<Node<V>>()).key }
    }

    /// The key and value of node `n`, if it is not null.
    ///
    /// # Safety
    ///
    /// `n` is null or a node of this map's tree.
    #[inline]
    unsafe fn entry(&self, n: *mut bindings::rb_node) -> Option<RbEntry<'_, V>> {
        if n.is_null() {
            return None;
        }
        let node = n.cast::<Node<V>>();
        // SAFETY: `n` is a node of the tree (caller), hence a live `Node<V>`
        // owned by the map, which `&self` keeps borrowed for the result.
        Some(unsafe { ((*node).key, &(*node).value) })
    }

    /// The node with key `key`, or null.
    #[inline]
    fn find(&self, key: u64) -> *mut bindings::rb_node {
        let mut n = self.root.rb_node;
        while !n.is_null() {
            // SAFETY: `n` is a non-null node of the tree: the root or a
            // child link of a node of the tree.
            let k = unsafe { Self::key_of(n) };
            // SAFETY: as above, `n` points to a valid `rb_node`.
            n = unsafe {
                match key.cmp(&k) {
                    core::cmp::Ordering::Less => (*n).rb_left,
                    core::cmp::Ordering::Greater => (*n).rb_right,
                    core::cmp::Ordering::Equal => return n,
                }
            };
        }
        n
    }

    /// The value stored under `key`.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        // SAFETY: `find` returns null or a node of the tree.
        unsafe { self.entry(self.find(key)) }.map(|(_, v)| v)
    }

    /// The value stored under `key`, mutably.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let n = self.find(key);
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node of the tree, a live `Node<V>` owned by the
        // map, which `&mut self` keeps borrowed exclusively for the result.
        Some(unsafe { &mut (*n.cast::<Node<V>>()).value })
    }

    /// The entries with the greatest key `<= key` and with the smallest key
    /// `> key`, found in one descent.
    #[inline]
    pub(crate) fn around(&self, key: u64) -> (Option<RbEntry<'_, V>>, Option<RbEntry<'_, V>>) {
        let (mut floor, mut above) = (ptr::null_mut(), ptr::null_mut());
        let mut n = self.root.rb_node;
        while !n.is_null() {
            // SAFETY: `n` is a non-null node of the tree.
            if unsafe { Self::key_of(n) } <= key {
                floor = n;
                // SAFETY: as above.
                n = unsafe { (*n).rb_right };
            } else {
                above = n;
                // SAFETY: as above.
                n = unsafe { (*n).rb_left };
            }
        }
        // SAFETY: both are null or nodes met on the way down.
        unsafe { (self.entry(floor), self.entry(above)) }
    }

    /// The greatest key `<= key`.
    #[inline]
    pub(crate) fn floor_key(&self, key: u64) -> Option<u64> {
        self.around(key).0.map(|(k, _)| k)
    }

    /// The smallest key `>= key`.
    #[inline]
    pub(crate) fn ceil_key(&self, key: u64) -> Option<u64> {
        let mut best = None;
        let mut n = self.root.rb_node;
        while !n.is_null() {
            // SAFETY: `n` is a non-null node of the tree.
            let k = unsafe { Self::key_of(n) };
            if k >= key {
                best = Some(k);
                // SAFETY: as above.
                n = unsafe { (*n).rb_left };
            } else {
                // SAFETY: as above.
                n = unsafe { (*n).rb_right };
            }
        }
        best
    }

    /// Stores `value` under `key` in the node memory `slot`. If `key` is
    /// taken, nothing changes and both are handed back.
    pub(crate) fn insert(&mut self, slot: RbSlot<V>, key: u64, value: V) -> core::result::Result<(), RbRemoved<V>> {
        let mut link: *mut *mut bindings::rb_node = &mut self.root.rb_node;
        let mut parent = ptr::null_mut();
        // SAFETY: `link` points to the root pointer or to a child pointer
        // of a node of the tree; every non-null pointer read is a node.
        unsafe {
            while !(*link).is_null() {
                parent = *link;
                let k = Self::key_of(parent);
                link = match key.cmp(&k) {
                    core::cmp::Ordering::Less => &mut (*parent).rb_left,
                    core::cmp::Ordering::Greater => &mut (*parent).rb_right,
                    core::cmp::Ordering::Equal => return Err((slot, value)),
                };
            }
        }
        let node = KBox::into_raw(slot.0.write(Node { links: bindings::rb_node::default(), key, value }));
        // SAFETY: `node` is a new, initialised node that nothing else
        // references; `parent` and `link` are where the descent found
        // `key`'s place, so linking and recolouring keep the tree valid and
        // ordered. INVARIANT: the tree now owns `node`, a `KBox` turned raw.
        unsafe {
            bindings::rb_link_node(&mut (*node).links, parent, link);
            bindings::rb_insert_color(&mut (*node).links, &mut self.root);
        }
        Ok(())
    }

    /// Unlinks node `n` and returns its memory and value.
    ///
    /// # Safety
    ///
    /// `n` is a non-null node of this map's tree.
    unsafe fn unlink(&mut self, n: *mut bindings::rb_node) -> RbRemoved<V> {
        let node = n.cast::<Node<V>>();
        // SAFETY: `n` is in the tree (caller); after `rb_erase` the tree no
        // longer references it. The node was a `KBox<Node<V>>`: reading its
        // value out leaves memory that is a valid `MaybeUninit<Node<V>>`
        // (same layout), which the slot then owns. INVARIANT: the tree
        // lost exactly this node.
        unsafe {
            bindings::rb_erase(n, &mut self.root);
            let value = ptr::read(&(*node).value);
            (RbSlot(KBox::from_raw(node.cast::<MaybeUninit<Node<V>>>())), value)
        }
    }

    /// Removes the entry under `key`: its node memory and its value.
    pub(crate) fn remove(&mut self, key: u64) -> Option<RbRemoved<V>> {
        let n = self.find(key);
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node of the tree.
        Some(unsafe { self.unlink(n) })
    }

    /// Removes the entry under `key` and returns it with the entry that
    /// followed it (the smallest key `> key`), from one search.
    pub(crate) fn remove_then_next(&mut self, key: u64) -> (Option<RbRemoved<V>>, Option<RbEntry<'_, V>>) {
        let n = self.find(key);
        if n.is_null() {
            return (None, None);
        }
        // SAFETY: `n` is a node of the tree; its successor is null or
        // another node, which stays in the tree (and valid) after `n` is
        // unlinked.
        unsafe {
            let next = bindings::rb_next(n);
            let removed = self.unlink(n);
            (Some(removed), self.entry(next))
        }
    }
}

impl<V> Drop for RbMap<V> {
    fn drop(&mut self) {
        // Children before parents, each node's successor taken before the
        // node is freed (`rbtree_postorder_for_each_entry_safe`).
        // SAFETY: the root is a valid tree.
        let mut n = unsafe { bindings::rb_first_postorder(&self.root) };
        while !n.is_null() {
            // SAFETY: `n` is a node not yet freed; the postorder successor
            // only reads `n`, its parent and the parent's right subtree,
            // none of which has been freed yet.
            let next = unsafe { bindings::rb_next_postorder(n) };
            // SAFETY: every node is a `KBox<Node<V>>` turned raw that the
            // map owns; each is freed once, and nothing reads it afterwards
            // (the successor was taken above).
            drop(unsafe { KBox::from_raw(n.cast::<Node<V>>()) });
            n = next;
        }
    }
}
