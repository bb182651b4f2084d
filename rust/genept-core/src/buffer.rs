//! Result buffers sized from user arguments, cheap to touch for the first time.
//!
//! **Never an abort.** A size comes from user arguments (`n_cells × n`), so it is computed
//! with checked arithmetic and allocated fallibly: an impossible size is a [`GeneptError`]
//! saying how much memory it would need, never "memory allocation of N bytes failed", which
//! takes the Python interpreter down with it.
//!
//! **Cheap first touch.** A kernel's result is a fresh allocation handed to Python, so every
//! 4 KB page of it is faulted in and zeroed by the OS as the kernel first writes it. In a
//! virtual machine a fault costs microseconds: measured 25% of `top_genes` (n = 1000, one 4 KB
//! page per cell). The buffer is therefore allocated zeroed (large ones come straight from
//! `mmap`, untouched) and, on Linux, advised to use transparent huge pages (2 MB: 512 times
//! fewer faults) where the system allows it (`madvise` mode, the common default).

use std::alloc::{alloc_zeroed, Layout};

use crate::error::{GeneptError, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
}

/// Element types whose all-zero bit pattern is the value zero (the only ones [`try_zeroed`]
/// hands out without writing them).
pub trait Zeroable: Copy + sealed::Sealed {}
impl Zeroable for f32 {}
impl Zeroable for i32 {}

/// A zeroed `rows × cols` buffer, or an error saying how much memory it would have needed.
pub fn try_zeroed<T: Zeroable>(rows: usize, cols: usize, what: &str) -> Result<Vec<T>> {
    let too_big = |bytes: String| {
        GeneptError::InvalidArgument(format!(
            "{what} would need {bytes} of memory ({rows} × {cols} values)"
        ))
    };
    let len = rows
        .checked_mul(cols)
        .ok_or_else(|| too_big("more than the address space".into()))?;
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    let layout =
        Layout::array::<T>(len).map_err(|_| too_big("more than the address space".into()))?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: `layout` has a non-zero size (checked above).
    let ptr = unsafe { alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(too_big(format!("{:.1} GB", bytes as f64 / 1e9)));
    }
    // SAFETY: `ptr` is non-null and was allocated by the global allocator with the layout of
    // `[T; len]` (size `len * size_of::<T>()`, align of `T`), which is what `Vec<T>` with
    // capacity `len` frees; its `len` elements are initialised, because every `Zeroable` type
    // (sealed: f32, i32) has zero as its all-zero bit pattern.
    let v = unsafe { Vec::from_raw_parts(ptr, len, len) };
    advise_huge(&v);
    Ok(v)
}

/// Below this size the advice is not worth a system call.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// Gives `advice` for the whole `unit`-aligned pieces inside `v` (Linux; nothing for buffers
/// under [`HUGE_MIN_BYTES`]).
///
/// # Safety
/// `advice` must leave the pages mapped and readable, and must change their contents at most
/// to zeros, and the caller must accept that for the pieces advised.
#[cfg(target_os = "linux")]
unsafe fn advise<T>(v: &[T], unit: usize, advice: libc::c_int) {
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(unit);
    let len = (start + bytes).saturating_sub(aligned) / unit * unit;
    if len > 0 {
        // SAFETY: the range lies inside the live allocation `v` (whole pages, page-aligned:
        // `unit` is a multiple of 4 KB); what the advice may do is the caller's contract. A
        // failure is harmless (the advice is not taken).
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, len, advice);
        }
    }
}

/// Advises the kernel to back the whole 2 MB pages inside `v` with huge pages (Linux, where
/// transparent huge pages are enabled; best before the pages are first touched).
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge<T>(v: &[T]) {
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs the pages (the contents stay).
    // madvise wants a page-aligned start: the whole 4 KB pages inside the buffer.
    unsafe { advise(v, 4096, libc::MADV_HUGEPAGE) }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge<T>(_v: &[T]) {}

/// Tells the OS it may take back the whole 2 MB pages inside `v` whenever it needs memory
/// (Linux `MADV_FREE`): until then they stay mapped, and writing them again costs no page
/// fault. Taken pages read as zero afterwards, so the contents of `v` (the whole 2 MB pages
/// inside it) are unspecified from here on: the caller must write every value it will read.
/// Whole huge pages only, so that a transparent huge page is never split.
#[cfg(target_os = "linux")]
pub(crate) fn advise_free<T: Zeroable>(v: &mut [T]) {
    // SAFETY: MADV_FREE leaves the pages mapped and readable and may replace their contents
    // with zeros, a valid value of every `Zeroable` type (`v` stays an allocation of valid
    // values); `&mut` makes the caller the only holder of `v`, so no reference sees its values
    // change, and this function's contract is that the caller does not rely on the contents.
    unsafe { advise(v, 2 << 20, libc::MADV_FREE) }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_free<T: Zeroable>(_v: &mut [T]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_buffers_are_errors() {
        let e = try_zeroed::<i32>(usize::MAX / 2, 4, "x").unwrap_err();
        assert!(e.to_string().contains("address space"), "{e}");
        let e = try_zeroed::<i32>(1 << 40, 1 << 21, "x").unwrap_err();
        assert!(
            e.to_string().contains("GB") || e.to_string().contains("address space"),
            "{e}"
        );
        assert_eq!(try_zeroed::<f32>(3, 2, "x").unwrap(), vec![0.0; 6]);
        assert!(try_zeroed::<f32>(0, 7, "x").unwrap().is_empty());
    }

    #[test]
    fn large_buffers_are_zero() {
        let v: Vec<i32> = try_zeroed(3 << 20, 1, "x").unwrap();
        assert!(v.iter().all(|&x| x == 0));
        assert_eq!(v.len(), 3 << 20);
    }
}
