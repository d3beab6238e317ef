// SPDX-License-Identifier: GPL-2.0

//! Slab caches (`struct kmem_cache`) that live as long as the module.
//!
//! C header: [`include/linux/slab.h`](srctree/include/linux/slab.h).
//!
//! A [`ModuleCache<T>`] sits in a `static`, is created in the module's
//! `init` before anything can allocate from it, and destroyed when the
//! [`ModuleCacheGuard`] that `create` returned is dropped at module exit.
//! Allocating from it is one `kmem_cache_alloc` and freeing one
//! `kmem_cache_free`, where `KBox` goes through `krealloc` (and, in 6.12, an
//! indirect call and two Rust functions before it) both ways.
//!
//! A value type names its cache with [`CacheNodes`]; [`FromCache`] then
//! allocates the nodes of an [`RbMap`](crate::rb_map::RbMap) of that type
//! from it.

use crate::bindings;
use crate::rb_map::{Node, NodeAlloc};
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;

/// A slab cache of objects of type `T`, usable from a `static`.
///
/// # Invariants
///
/// `cache` is null or a cache made by [`ModuleCache::create`] for objects
/// of `T`'s size and alignment, not yet destroyed.
pub(crate) struct ModuleCache<T> {
    cache: AtomicPtr<bindings::kmem_cache>,
    _objects: PhantomData<T>,
}

// SAFETY: the cache pointer is an atomic, and a `kmem_cache` may be used
// from any thread; the cache holds no `T` value, only memory for one.
unsafe impl<T> Sync for ModuleCache<T> {}

/// Destroys a [`ModuleCache`] when dropped; keep it in the module's state,
/// after anything that can still allocate from the cache.
pub(crate) struct ModuleCacheGuard<T: 'static>(&'static ModuleCache<T>);

impl<T> ModuleCache<T> {
    /// A cache that does not exist yet: every allocation fails until
    /// [`Self::create`].
    pub(crate) const fn new() -> Self {
        // INVARIANT: null.
        ModuleCache { cache: AtomicPtr::new(ptr::null_mut()), _objects: PhantomData }
    }

    /// Creates the cache, named `name` in `/proc/slabinfo`.
    pub(crate) fn create(&'static self, name: &'static CStr) -> Result<ModuleCacheGuard<T>> {
        let size = u32::try_from(core::mem::size_of::<T>()).map_err(|_| EINVAL)?;
        let align = u32::try_from(core::mem::align_of::<T>()).map_err(|_| EINVAL)?;
        let mut args = bindings::kmem_cache_args { align, ..Default::default() };
        // SAFETY: `name` lives for ever, as the cache requires; `args` is a
        // valid argument block for the duration of the call.
        let cache = unsafe { bindings::__kmem_cache_create_args(name.as_char_ptr(), size, &mut args, 0) };
        if cache.is_null() {
            return Err(ENOMEM);
        }
        // INVARIANT: made for `T`'s size and alignment. A second `create`
        // would replace a live cache: refuse it and destroy the new one.
        if self
            .cache
            .compare_exchange(ptr::null_mut(), cache, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: `cache` was made above and nothing allocated from it.
            unsafe { bindings::kmem_cache_destroy(cache) };
            return Err(EBUSY);
        }
        Ok(ModuleCacheGuard(self))
    }

    /// Memory for one `T`, uninitialised (`GFP_KERNEL`: may sleep).
    /// `ENOMEM` if the cache does not exist or has no memory.
    #[inline]
    pub(crate) fn alloc(&self) -> Result<NonNull<MaybeUninit<T>>> {
        let cache = self.cache.load(Ordering::Acquire);
        if cache.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: by the type invariant `cache` is a live cache.
        let p = unsafe { bindings::kmem_cache_alloc_noprof(cache, bindings::GFP_KERNEL) };
        NonNull::new(p.cast::<MaybeUninit<T>>()).ok_or(ENOMEM)
    }

    /// Gives back memory that [`Self::alloc`] returned.
    ///
    /// # Safety
    ///
    /// `obj` came from `self.alloc()`, was not freed since, and holds no
    /// value that still needs dropping; nothing uses it afterwards.
    #[inline]
    pub(crate) unsafe fn free(&self, obj: NonNull<MaybeUninit<T>>) {
        let cache = self.cache.load(Ordering::Acquire);
        // SAFETY: the object came from this cache (caller), so the cache
        // exists: its guard destroys it only after the last user is gone.
        unsafe { bindings::kmem_cache_free(cache, obj.as_ptr().cast()) };
    }
}

impl<T> Drop for ModuleCacheGuard<T> {
    fn drop(&mut self) {
        let cache = self.0.cache.swap(ptr::null_mut(), Ordering::AcqRel);
        if !cache.is_null() {
            // SAFETY: made by `create`, destroyed once (the pointer is now
            // null). Objects still allocated would make the kernel warn and
            // keep the cache rather than free memory in use.
            unsafe { bindings::kmem_cache_destroy(cache) };
        }
    }
}

/// A value whose tree nodes come from a [`ModuleCache`] of their own.
pub(crate) trait CacheNodes: Sized + 'static {
    /// The cache.
    fn cache() -> &'static ModuleCache<Node<Self>>;
}

/// The allocator of `V`'s tree nodes: its [`CacheNodes::cache`].
pub(crate) struct FromCache<V>(PhantomData<V>);

// SAFETY: `alloc` hands out fresh memory for one `Node<V>` from the cache
// made for that type, which nothing else uses until `free` gives it back
// to the same cache.
unsafe impl<V: CacheNodes> NodeAlloc<V> for FromCache<V> {
    #[inline]
    fn alloc() -> Result<NonNull<MaybeUninit<Node<V>>>> {
        V::cache().alloc()
    }

    #[inline]
    unsafe fn free(node: NonNull<MaybeUninit<Node<V>>>) {
        // SAFETY: the caller hands back memory from `alloc`, holding no value.
        unsafe { V::cache().free(node) }
    }
}
