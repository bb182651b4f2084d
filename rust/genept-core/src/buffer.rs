//! Result buffers sized from user arguments: checked arithmetic and fallible allocation, so that
//! an impossible size is a [`GeneptError`] saying how much memory it would need, never an abort
//! ("memory allocation of N bytes failed") that takes the Python interpreter down with it.

use crate::error::{GeneptError, Result};

/// A zeroed `rows × cols` buffer, or an error saying how much memory it would have needed
/// (checked arithmetic, fallible allocation: never an abort).
pub fn try_zeroed<T: Copy + Default>(rows: usize, cols: usize, what: &str) -> Result<Vec<T>> {
    let too_big = |bytes: String| {
        GeneptError::InvalidArgument(format!(
            "{what} would need {bytes} of memory ({rows} × {cols} values)"
        ))
    };
    let len = rows
        .checked_mul(cols)
        .ok_or_else(|| too_big("more than the address space".into()))?;
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| too_big(format!("{:.1} GB", bytes as f64 / 1e9)))?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_buffers_are_errors() {
        let e = try_zeroed::<i32>(usize::MAX / 2, 4, "x").unwrap_err();
        assert!(e.to_string().contains("address space"), "{e}");
        let e = try_zeroed::<i32>(1 << 40, 1 << 21, "x").unwrap_err();
        assert!(e.to_string().contains("GB"), "{e}");
        assert_eq!(try_zeroed::<f32>(3, 2, "x").unwrap(), vec![0.0; 6]);
    }
}
