//! [`Wiped`]: for other crates' types that hold secrets inline and never wipe them (ring's
//! AEAD keys, snow's handshake state).

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::{Deref, DerefMut};

/// A `T` in its own heap box, never moved once built, whose bytes are overwritten with
/// zeros (zeroize's volatile writes) right after `T` is dropped. Heap memory that `T`
/// itself points to is dropped normally, not wiped; a `T` built on the stack and moved in
/// may leave a copy of its initial bytes on the stack.
pub(crate) struct Wiped<T>(Box<ManuallyDrop<T>>);

impl<T> Wiped<T> {
    pub fn new(value: T) -> Wiped<T> {
        Wiped(Box::new(ManuallyDrop::new(value)))
    }
}

impl<T> Deref for Wiped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Wiped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> Wiped<T> {
    /// Drop the `T` in `slot`, then zero its bytes.
    ///
    /// # Safety
    /// `slot` is valid and exclusively ours, and is never read as `T` again.
    unsafe fn drop_and_wipe(slot: *mut ManuallyDrop<T>) {
        // SAFETY: `T` is dropped exactly once, here. Its bytes are then zeroed viewed as
        // `MaybeUninit<T>` (no validity invariant, no `Drop`).
        unsafe {
            ManuallyDrop::drop(&mut *slot);
            zeroize::zeroize_flat_type(slot.cast::<MaybeUninit<T>>());
        }
    }
}

impl<T> Drop for Wiped<T> {
    fn drop(&mut self) {
        // SAFETY: the box is ours; it then frees the bytes without dropping
        // (`ManuallyDrop`), so they are never read as `T` again.
        unsafe { Self::drop_and_wipe(&mut *self.0) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Drops and wipes `w` as its `Drop` does and returns the bytes of `T`'s slot
    /// afterwards (every byte has been written), read before the box is freed.
    pub(crate) fn bytes_after_drop<T>(w: Wiped<T>) -> Vec<u8> {
        let w = ManuallyDrop::new(w);
        // SAFETY: `w` is never dropped, so the box is taken out exactly once; `raw` stays
        // allocated until `Box::from_raw`, which frees it without dropping `T` again.
        unsafe {
            let raw = Box::into_raw(std::ptr::read(&w.0));
            Wiped::<T>::drop_and_wipe(raw);
            let after =
                std::slice::from_raw_parts(raw.cast::<u8>(), core::mem::size_of::<T>()).to_vec();
            drop(Box::from_raw(raw));
            after
        }
    }

    struct Secret([u8; 40], Vec<u8>);

    #[test]
    fn bytes_are_zero_after_drop() {
        let w = Wiped::new(Secret([0xa7; 40], vec![1; 1000]));
        let secret: &Secret = &w;
        assert_eq!(secret.0, [0xa7; 40]);
        assert_eq!(secret.1.len(), 1000);
        let after = bytes_after_drop(w);
        assert_eq!(after.len(), 64);
        assert!(after.iter().all(|&b| b == 0), "{after:02x?}");
    }
}
