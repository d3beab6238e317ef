// SPDX-License-Identifier: GPL-2.0

//! Module parameters defined in C.
//!
//! C header: [`include/linux/moduleparam.h`](srctree/include/linux/moduleparam.h).
//!
//! Linux 6.12 has no module parameters for Rust modules, and the
//! `module_param_named` macro cannot be reached from Rust: a module defines
//! its parameters in a C file of its own and declares them in Rust with
//! [`c_module_params!`], as [`ModuleParam`]s. Writes through
//! `/sys/module/<name>/parameters/` may happen at any time; a read is one
//! `READ_ONCE` of the current value.

use core::cell::UnsafeCell;

/// A value a C module parameter may hold: a plain word whose every stored
/// bit pattern is valid (sysfs stores 0 or 1 in a `bool` parameter).
pub(crate) trait ParamValue: Copy + private::Sealed {}

impl ParamValue for bool {}
impl ParamValue for u32 {}

mod private {
    pub(crate) trait Sealed {}
    impl Sealed for bool {}
    impl Sealed for u32 {}
}

/// A module parameter of C type `T` (`bool`, or `unsigned int` for `u32`),
/// which sysfs may rewrite at any time.
#[repr(transparent)]
pub(crate) struct ModuleParam<T: ParamValue>(UnsafeCell<T>);

// SAFETY: sysfs writes a parameter while another thread may read it, as in
// C: every read is a single volatile load of an aligned word, which sees
// either the old or the new value, and every value sysfs stores is valid
// for `T`. Rust code never writes it.
unsafe impl<T: ParamValue> Sync for ModuleParam<T> {}

impl<T: ParamValue> ModuleParam<T> {
    /// The current value (`READ_ONCE`).
    #[inline]
    pub(crate) fn get(&self) -> T {
        // SAFETY: the cell is a live static; see the `Sync` impl for the
        // concurrent writes.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }
}

/// Declares module parameters that a C file of the module defines:
///
/// ```ignore
/// c_module_params! {
///     /// `dma_entry_limit`.
///     pub(crate) static DMA_ENTRY_LIMIT: u32 = "type1_rs_dma_entry_limit";
/// }
/// ```
///
/// Each string names a C variable of the matching type (`bool`, or
/// `unsigned int` for `u32`) that the module's C file defines and passes to
/// `module_param_named`; that is the promise the declaration makes, and the
/// reason the `unsafe extern` block it expands to is sound.
macro_rules! c_module_params {
    ($($(#[$meta:meta])* $vis:vis static $name:ident: $ty:ty = $cname:literal;)*) => {
        // Sound because each symbol is a C variable of the declared type,
        // defined in the module's own C file (the macro's contract), which
        // `ModuleParam` may read concurrently with sysfs writes.
        #[allow(unsafe_code)]
        unsafe extern "C" {
            $(
                $(#[$meta])*
                #[link_name = $cname]
                $vis safe static $name: $crate::module_param::ModuleParam<$ty>;
            )*
        }
    };
}
pub(crate) use c_module_params;
