// SPDX-License-Identifier: GPL-2.0

//! An ordered map of values keyed by a `u64` they carry, on the kernel's
//! red-black tree (`lib/rbtree.c`), built for an IOVA map: overlap and
//! neighbour lookups in one descent, and insertions and removals that reuse
//! the last lookup's descent instead of making their own.
//!
//! C header: [`include/linux/rbtree.h`](srctree/include/linux/rbtree.h).
//!
//! - [`RbMap::around`] finds the greatest key `<= k` and the smallest key
//!   `> k` in one descent; [`RbMap::find_overlap`] walks down as
//!   `vfio_find_dma()` does and stops at the first value whose interval
//!   overlaps a range.
//! - A map that remembers ([`Remember`]) keeps where its last lookup ended.
//!   An insertion of the key just looked up links the new node where that
//!   lookup ended, and a removal of a key just found (or just reached by
//!   [`RbMap::remove_then_next`]) unlinks it without searching: a `MAP_DMA`
//!   that checked for overlaps, or an `UNMAP_DMA` that checked the v2 rules,
//!   descends the tree once in all (the C type1: two and three times). A map
//!   that does not ([`Forget`]) is one pointer wide.
//! - A node is the tree links followed by the value, which holds its own
//!   key ([`RbValue`]): no separate key field, so a node is as small as the
//!   value allows (the fewer pages a lookup's nodes spread over, the fewer
//!   TLB and cache misses it takes).
//! - Node memory comes from a [`NodeAlloc`] ahead of the insertion ([`RbSlot`]), so inserting cannot fail
//!   and may happen under a lock. Values are built in their node and
//!   dropped there: a removal hands out the node itself ([`RbOwned`]),
//!   whose memory its owner can keep for the next insertion
//!   ([`slab::FromCache`](crate::slab::FromCache) takes it from a slab cache).
//!
//! Lookups, insertions and removals are `#[inline]`: each runs on every
//! `MAP_DMA`, `UNMAP_DMA` and pin, and inlined it keeps that path one
//! function.
//!
//! One concept over 600 lines: the map and the memory of its nodes, whose
//! safety arguments lean on each other (a node's memory is owned by exactly
//! one of a slot, the map and a removed value), so they stay in one file.

use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use kernel::bindings;
use kernel::prelude::*;

/// A value that carries its key.
pub(crate) trait RbValue {
    /// The key. It must not change while the value is in a map: the tree is
    /// ordered by it.
    fn rb_key(&self) -> u64;
}

/// One element. `links` comes first and the layout is C's, so a pointer
/// to a node's `rb_node` is a pointer to the node.
#[repr(C)]
pub(crate) struct Node<V> {
    links: bindings::rb_node,
    value: V,
}

/// Where the nodes of an [`RbMap`] come from.
///
/// # Safety
///
/// `alloc` returns memory valid for a `Node<V>` that nothing else uses,
/// until it is handed to `free`.
pub(crate) unsafe trait NodeAlloc<V> {
    /// Memory for one node (may sleep).
    fn alloc() -> Result<NonNull<MaybeUninit<Node<V>>>>;

    /// Gives back memory from [`Self::alloc`].
    ///
    /// # Safety
    ///
    /// `node` came from `alloc`, holds no live value, and is not used again.
    unsafe fn free(node: NonNull<MaybeUninit<Node<V>>>);
}

/// The memory of one node: allocated, holding no value, in no tree.
///
/// # Invariants
///
/// `0` came from `A::alloc()`, is owned by this slot alone and holds no
/// live value.
pub(crate) struct RbSlot<V, A: NodeAlloc<V>>(NonNull<MaybeUninit<Node<V>>>, PhantomData<A>);

// SAFETY: a slot is memory that nothing else references (its links are
// not in any tree) and holds no value.
unsafe impl<V: Send, A: NodeAlloc<V>> Send for RbSlot<V, A> {}

impl<V, A: NodeAlloc<V>> RbSlot<V, A> {
    /// Allocates the memory of one node.
    #[inline]
    pub(crate) fn new() -> Result<Self> {
        // INVARIANT: fresh memory from the allocator.
        Ok(RbSlot(A::alloc()?, PhantomData))
    }

    /// Gives up ownership of the memory without freeing it.
    #[inline]
    fn into_raw(self) -> NonNull<Node<V>> {
        ManuallyDrop::new(self).0.cast()
    }
}

impl<V, A: NodeAlloc<V>> Drop for RbSlot<V, A> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the memory came from `A::alloc`,
        // holds no value and is owned by the slot alone.
        unsafe { A::free(self.0) };
    }
}

/// A node taken out of a map, with its value still in it.
///
/// Derefs to the value. Dropping it drops the value in place and frees
/// the node; [`RbOwned::into_slot`] keeps the memory for another insertion.
///
/// # Invariants
///
/// `0` came from `A::alloc()`, holds an initialised `Node<V>`, is in no
/// tree and is owned by this value alone.
pub(crate) struct RbOwned<V, A: NodeAlloc<V>>(NonNull<Node<V>>, PhantomData<(V, A)>);

// SAFETY: the node is owned alone; sending it sends its `V`.
unsafe impl<V: Send, A: NodeAlloc<V>> Send for RbOwned<V, A> {}

impl<V, A: NodeAlloc<V>> RbOwned<V, A> {
    /// Drops the value in place and returns the memory as a slot.
    #[inline]
    pub(crate) fn into_slot(self) -> RbSlot<V, A> {
        let node = ManuallyDrop::new(self).0;
        // SAFETY: the node holds an initialised value (type invariant),
        // dropped once here; what is left is memory from `A::alloc`, owned
        // alone and holding no value, as a slot requires.
        unsafe { ptr::drop_in_place(&mut (*node.as_ptr()).value) };
        // INVARIANT: see above.
        RbSlot(node.cast(), PhantomData)
    }

    /// Moves the value out and returns it with the memory as a slot.
    #[inline]
    pub(crate) fn into_parts(self) -> (V, RbSlot<V, A>) {
        let node = ManuallyDrop::new(self).0;
        // SAFETY: the node holds an initialised value (type invariant),
        // moved out once here; what is left is memory from `A::alloc`,
        // owned alone and holding no value, as a slot requires.
        let value = unsafe { ptr::read(&(*node.as_ptr()).value) };
        // INVARIANT: see above.
        (value, RbSlot(node.cast(), PhantomData))
    }

    /// Moves the value out and frees the node.
    #[inline]
    pub(crate) fn into_value(self) -> V {
        self.into_parts().0
    }
}

impl<V, A: NodeAlloc<V>> Deref for RbOwned<V, A> {
    type Target = V;

    #[inline]
    fn deref(&self) -> &V {
        // SAFETY: an initialised node owned by `self` (type invariant).
        unsafe { &(*self.0.as_ptr()).value }
    }
}

impl<V, A: NodeAlloc<V>> DerefMut for RbOwned<V, A> {
    #[inline]
    fn deref_mut(&mut self) -> &mut V {
        // SAFETY: an initialised node owned by `self` alone (type invariant).
        unsafe { &mut (*self.0.as_ptr()).value }
    }
}

impl<V, A: NodeAlloc<V>> core::borrow::Borrow<V> for RbOwned<V, A> {
    #[inline]
    fn borrow(&self) -> &V {
        self
    }
}

impl<V, A: NodeAlloc<V>> core::borrow::BorrowMut<V> for RbOwned<V, A> {
    #[inline]
    fn borrow_mut(&mut self) -> &mut V {
        self
    }
}

impl<V, A: NodeAlloc<V>> Drop for RbOwned<V, A> {
    fn drop(&mut self) {
        // SAFETY: as in `into_slot`: the value is dropped once, then the
        // memory (from `A::alloc`, owned alone) is freed.
        unsafe {
            ptr::drop_in_place(&mut (*self.0.as_ptr()).value);
            A::free(self.0.cast());
        }
    }
}

/// An entry found by a lookup: its key and value.
pub(crate) type RbEntry<'a, V> = (u64, &'a V);

/// Where a map's last lookup ended, for the insertion or removal that
/// follows it.
#[derive(Clone, Copy)]
pub(crate) enum Last {
    /// Nothing usable.
    None,
    /// `floor` is the node with the greatest key `<= key` (null if none).
    Gap { key: u64, floor: *mut bindings::rb_node },
    /// `node` is the node with key `key`.
    At { key: u64, node: *mut bindings::rb_node },
    /// `key` is not in the tree, and a descent towards it ended below
    /// `parent` (null: the tree is empty): its child link on `key`'s side
    /// (right if `parent`'s key is `<= key`, else left) is null.
    Below { key: u64, parent: *mut bindings::rb_node },
}

/// Whether a map keeps [`Last`]: [`Remember`] or [`Forget`].
pub(crate) trait Memory {
    /// Nothing remembered.
    const NONE: Self;

    /// What is remembered.
    fn get(&self) -> Last;

    /// Remembers `last` (if the map remembers at all).
    fn set(&mut self, last: Last);
}

/// A map that remembers where its last lookup ended.
pub(crate) struct Remember(Last);

impl Memory for Remember {
    const NONE: Self = Remember(Last::None);

    #[inline(always)]
    fn get(&self) -> Last {
        self.0
    }

    #[inline(always)]
    fn set(&mut self, last: Last) {
        self.0 = last;
    }
}

/// A map that does not: one pointer wide.
pub(crate) struct Forget;

impl Memory for Forget {
    const NONE: Self = Forget;

    #[inline(always)]
    fn get(&self) -> Last {
        Last::None
    }

    #[inline(always)]
    fn set(&mut self, _last: Last) {}
}

/// A map of `V`s ordered by their keys, with nodes from `A`.
///
/// # Invariants
///
/// - `root` is a valid red-black tree whose nodes are ordered by key, with
///   no key twice. Each of its `rb_node`s is the `links` field of an
///   initialised `Node<V>` in memory from `A::alloc()`, owned by this map
///   alone.
/// - What `memory` holds describes the tree as it is: every structural
///   change (link, unlink) sets it anew or to `Last::None`.
pub(crate) struct RbMap<V: RbValue, A: NodeAlloc<V>, M: Memory = Remember> {
    root: bindings::rb_root,
    memory: M,
    _owns: PhantomData<(V, A)>,
}

// SAFETY: the map owns its nodes and shares them with nobody: sending the
// map sends its values (what it remembers points into its own tree).
unsafe impl<V: RbValue + Send, A: NodeAlloc<V>, M: Memory> Send for RbMap<V, A, M> {}
// SAFETY: a shared map gives out only shared references to its values.
unsafe impl<V: RbValue + Sync, A: NodeAlloc<V>, M: Memory> Sync for RbMap<V, A, M> {}

impl<V: RbValue, A: NodeAlloc<V>, M: Memory> RbMap<V, A, M> {
    /// An empty map.
    pub(crate) const fn new() -> Self {
        // INVARIANT: the empty tree, and nothing remembered.
        RbMap { root: bindings::rb_root { rb_node: ptr::null_mut() }, memory: M::NONE, _owns: PhantomData }
    }

    /// Whether the map is empty.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.root.rb_node.is_null()
    }

    /// The value of the node whose links are `n`.
    ///
    /// # Safety
    ///
    /// `n` is a non-null node of this map's tree; the reference does not
    /// outlive the node.
    #[inline(always)]
    unsafe fn value_of<'a>(n: *mut bindings::rb_node) -> &'a V {
        // SAFETY: by the type invariant `n` is the first field of a live,
        // initialised `Node<V>` at the same address.
        unsafe { &(*n.cast::<Node<V>>()).value }
    }

    /// The key of the node whose links are `n`.
    ///
    /// # Safety
    ///
    /// `n` is a non-null node of this map's tree.
    #[inline(always)]
    unsafe fn key_of(n: *mut bindings::rb_node) -> u64 {
        // SAFETY: the caller's contract is `value_of`'s.
        unsafe { Self::value_of(n) }.rb_key()
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
        // SAFETY: `n` is a node of the tree (caller), hence a live `Node<V>`
        // owned by the map, which `&self` keeps borrowed for the result.
        let v = unsafe { Self::value_of(n) };
        Some((v.rb_key(), v))
    }

    /// The node with key `key`, or null: from what the last lookup
    /// remembered if it can tell, else by a descent.
    #[inline]
    fn find(&self, key: u64) -> *mut bindings::rb_node {
        match self.memory.get() {
            // The greatest key `<= key` is `key`'s node if there is one.
            Last::Gap { key: k, floor, .. } if k == key => {
                // SAFETY: `floor` is null or a node of the tree (type invariant).
                let found = !floor.is_null() && unsafe { Self::key_of(floor) } == key;
                return if found { floor } else { ptr::null_mut() };
            }
            Last::At { key: k, node } if k == key => return node,
            Last::Below { key: k, .. } if k == key => return ptr::null_mut(),
            _ => {}
        }
        let mut n = self.root.rb_node;
        while !n.is_null() {
            // SAFETY: `n` is a non-null node of the tree: the root or a
            // child link of a node of the tree.
            let k = unsafe { Self::key_of(n) };
            if k == key {
                break;
            }
            // SAFETY: as above, `n` points to a valid `rb_node`.
            n = unsafe { if key < k { (*n).rb_left } else { (*n).rb_right } };
        }
        n
    }

    /// The value stored under `key`.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        // SAFETY: `find` returns null or a node of the tree.
        unsafe { self.entry(self.find(key)) }.map(|(_, v)| v)
    }

    /// The value stored under `key`, mutably. Its key must not change.
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
    /// `> key`, found in one (branch-free) descent; the map remembers the
    /// first, for a removal of `key` that follows.
    #[inline(always)]
    pub(crate) fn around(&mut self, key: u64) -> (Option<RbEntry<'_, V>>, Option<RbEntry<'_, V>>) {
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
        // INVARIANT: `key`'s floor in the tree as it is.
        self.memory.set(Last::Gap { key, floor });
        // SAFETY: both are null or nodes met on the way down.
        unsafe { (self.entry(floor), self.entry(above)) }
    }

    /// The first node met on the way down whose interval `[key, key +
    /// len(value))` overlaps `[start, start + size)`: neither the range ends
    /// at or below the node's key, nor the node ends at or below `start` (in
    /// exact arithmetic; either end may be 2^64). The descent is directed by
    /// the range, as `vfio_find_dma()`'s is, and stops at the first overlap:
    /// the deepest nodes, the ones least likely to be in any cache, are
    /// read only when no value is in the way.
    ///
    /// The node found is remembered for its removal. When none is found and
    /// `size` is not 0, the descent took the way a search for `start` takes
    /// (every node on it lies wholly on one side of the range), and where it
    /// ended is remembered for an insertion of `start`.
    #[inline(never)]
    pub(crate) fn find_overlap(&mut self, start: u64, size: u64, len: impl Fn(&V) -> u64) -> Option<RbEntry<'_, V>> {
        match start.checked_add(size) {
            Some(end) => self.descend_overlap(start, size, |k| end <= k, len),
            // The range reaches 2^64: it never ends below a node.
            None => self.descend_overlap(start, size, |_| false, len),
        }
    }

    /// The loop of [`Self::find_overlap`], for `ends_below(key)`: whether
    /// the range ends at or below `key`.
    #[inline(always)]
    fn descend_overlap(
        &mut self,
        start: u64,
        size: u64,
        ends_below: impl Fn(u64) -> bool,
        len: impl Fn(&V) -> u64,
    ) -> Option<RbEntry<'_, V>> {
        let mut n = self.root.rb_node;
        // The node whose null child ends the descent (null: the tree is
        // empty, and the root link is where `start` goes).
        let mut parent = ptr::null_mut();
        // Each side loads its own child and tests it for the end of the
        // descent, as the C loop does.
        while !n.is_null() {
            // SAFETY: `n` is a non-null node of the tree, a live `Node<V>`
            // (type invariant); the value is only read, while the node lives.
            let v = unsafe { Self::value_of(n) };
            let k = v.rb_key();
            if ends_below(k) {
                // SAFETY: as above.
                let left = unsafe { (*n).rb_left };
                if left.is_null() {
                    parent = n;
                    break;
                }
                n = left;
            } else if k <= start && start - k >= len(v) {
                // SAFETY: as above.
                let right = unsafe { (*n).rb_right };
                if right.is_null() {
                    parent = n;
                    break;
                }
                n = right;
            } else {
                // INVARIANT: `n` is in the tree under key `k`.
                self.memory.set(Last::At { key: k, node: n });
                // SAFETY: `n` is a node of the tree.
                return unsafe { self.entry(n) };
            }
        }
        // INVARIANT: with a non-empty range, every node on the way lies
        // wholly below it (went right, key `<= start`) or wholly above it
        // (went left, key `> start`): the way of a search for `start`, which
        // ended at `parent`'s null child on `start`'s side. An empty range
        // may go left at `start` itself, so nothing is remembered for it.
        self.memory.set(if size != 0 { Last::Below { key: start, parent } } else { Last::None });
        None
    }

    /// The greatest key `<= key`.
    #[inline]
    pub(crate) fn floor_key(&mut self, key: u64) -> Option<u64> {
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

    /// Calls `f` with every value, in key order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        // SAFETY: the root is a valid tree; `rb_first` and `rb_next` return
        // null or nodes of it, which stay valid while `&self` is borrowed.
        unsafe {
            let mut n = bindings::rb_first(&self.root);
            while !n.is_null() {
                f(Self::value_of(n));
                n = bindings::rb_next(n);
            }
        }
    }

    /// Where a node with `key` goes: its parent and the null child link
    /// of that parent (or of the root) to put it in; `None` if `key` is
    /// taken. Uses the last lookup when it was a [`Self::find_overlap`] of
    /// `key` (the one an insertion follows), else descends.
    #[inline(always)]
    fn link_of(&mut self, key: u64) -> Option<(*mut bindings::rb_node, *mut *mut bindings::rb_node)> {
        match self.memory.get() {
            Last::Below { key: k, parent } if k == key => {
                if parent.is_null() {
                    return Some((parent, &mut self.root.rb_node));
                }
                // SAFETY: `parent` is a node of the tree, and its child on
                // `key`'s side is null (type invariant).
                let link = unsafe {
                    if Self::key_of(parent) <= key {
                        &mut (*parent).rb_right
                    } else {
                        &mut (*parent).rb_left
                    }
                };
                return Some((parent, link));
            }
            Last::At { key: k, .. } if k == key => return None,
            _ => {}
        }
        self.descend_for_link(key)
    }

    /// [`Self::link_of`] by a descent from the root.
    #[inline(never)]
    fn descend_for_link(&mut self, key: u64) -> Option<(*mut bindings::rb_node, *mut *mut bindings::rb_node)> {
        let mut link: *mut *mut bindings::rb_node = &mut self.root.rb_node;
        let mut parent = ptr::null_mut();
        // SAFETY: `link` points to the root pointer or to a child pointer
        // of a node of the tree; every non-null pointer read is a node.
        unsafe {
            while !(*link).is_null() {
                parent = *link;
                let k = Self::key_of(parent);
                if key == k {
                    return None;
                }
                link = if key < k { &mut (*parent).rb_left } else { &mut (*parent).rb_right };
            }
        }
        Some((parent, link))
    }

    /// Stores `value` (under its key) in the node memory `slot`. If the key
    /// is taken, nothing changes and both are handed back.
    ///
    /// Inlined, so that the value is built in the node rather than moved
    /// into it.
    #[inline(always)]
    pub(crate) fn insert(&mut self, slot: RbSlot<V, A>, value: V) -> core::result::Result<(), (RbSlot<V, A>, V)> {
        let Some((parent, link)) = self.link_of(value.rb_key()) else {
            return Err((slot, value));
        };
        let node = slot.into_raw();
        // SAFETY: `node` is memory for a `Node<V>` that nothing else
        // references (the slot's invariant). `parent` and `link` are where
        // the key belongs in the ordered tree (`link_of`) and `*link` is
        // null: linking there (what the C `rb_link_node` does) and
        // recolouring keep the tree valid and ordered. INVARIANT: the tree
        // now owns an initialised node from `A::alloc`; `memory` is cleared.
        unsafe {
            let p = node.as_ptr();
            ptr::addr_of_mut!((*p).value).write(value);
            ptr::addr_of_mut!((*p).links).write(bindings::rb_node {
                __rb_parent_color: parent as kernel::ffi::c_ulong,
                rb_right: ptr::null_mut(),
                rb_left: ptr::null_mut(),
            });
            *link = &mut (*p).links;
            self.memory.set(Last::None);
            bindings::rb_insert_color(&mut (*p).links, &mut self.root);
        }
        Ok(())
    }

    /// Unlinks node `n` and returns it.
    ///
    /// # Safety
    ///
    /// `n` is a non-null node of this map's tree.
    #[inline]
    unsafe fn unlink(&mut self, n: *mut bindings::rb_node) -> RbOwned<V, A> {
        // SAFETY: `n` is in the tree (caller); after `rb_erase` the tree no
        // longer references it, so the initialised node is the returned
        // value's alone. INVARIANT: the tree lost exactly this node, and
        // `memory`, which may name it, is cleared.
        unsafe {
            bindings::rb_erase(n, &mut self.root);
            self.memory.set(Last::None);
            RbOwned(NonNull::new_unchecked(n.cast::<Node<V>>()), PhantomData)
        }
    }

    /// Removes the entry under `key`.
    #[inline]
    pub(crate) fn remove(&mut self, key: u64) -> Option<RbOwned<V, A>> {
        let n = self.find(key);
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node of the tree.
        Some(unsafe { self.unlink(n) })
    }

    /// Lets `update` change the value under `key` (not its key) and removes
    /// the entry if it returns true: `None` if there is no such entry, else
    /// the removed entry, if it was. One search.
    #[inline]
    pub(crate) fn remove_if(&mut self, key: u64, update: impl FnOnce(&mut V) -> bool) -> Option<Option<RbOwned<V, A>>> {
        let n = self.find(key);
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is a node of the tree, a live `Node<V>` owned by the
        // map, borrowed exclusively through `&mut self` for the call.
        if !update(unsafe { &mut (*n.cast::<Node<V>>()).value }) {
            return Some(None);
        }
        // SAFETY: `n` is a node of the tree.
        Some(Some(unsafe { self.unlink(n) }))
    }

    /// Removes the entry under `key` and returns it with the entry that
    /// followed it (the smallest key `> key`), which the map remembers
    /// for a removal of that one.
    #[inline]
    pub(crate) fn remove_then_next(&mut self, key: u64) -> (Option<RbOwned<V, A>>, Option<RbEntry<'_, V>>) {
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
            if !next.is_null() {
                // INVARIANT: `next` is in the tree, under its own key.
                self.memory.set(Last::At { key: Self::key_of(next), node: next });
            }
            (Some(removed), self.entry(next))
        }
    }
}

impl<V: RbValue, A: NodeAlloc<V>, M: Memory> Drop for RbMap<V, A, M> {
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        // Children before parents, each node's successor taken before the
        // node is freed (`rbtree_postorder_for_each_entry_safe`).
        // SAFETY: the root is a valid tree.
        let mut n = unsafe { bindings::rb_first_postorder(&self.root) };
        while !n.is_null() {
            // SAFETY: `n` is a node not yet freed; the postorder successor
            // only reads `n`, its parent and the parent's right subtree,
            // none of which has been freed yet.
            let next = unsafe { bindings::rb_next_postorder(n) };
            // SAFETY: every node is an initialised node from `A::alloc`
            // that the map owns alone; each is dropped once, and nothing
            // reads it afterwards (the successor was taken above).
            drop(RbOwned::<V, A>(unsafe { NonNull::new_unchecked(n.cast()) }, PhantomData));
            n = next;
        }
    }
}
