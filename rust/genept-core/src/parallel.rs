//! Thread pools the user controls, safe after `fork`.
//!
//! Each distinct thread count gets one rayon pool, built on first use and reused. The number of
//! threads is what the caller asks for, else every core, and never more than
//! `GENEPT_FAST_NUM_THREADS` when that variable is set, nor more than [`thread_limit`]
//! (`MAX_THREADS_PER_CORE` × the available cores): a larger request is capped, since a pool of
//! 10,000 threads takes most of a minute to start and cannot run faster than one of a few per
//! core. (The Python layer warns when it caps a request.) A forked child (multiprocessing, Dask
//! workers) inherits the parent's pool objects but not their threads, so the cache remembers
//! the process id that built it and a child silently builds fresh pools of its own instead of
//! waiting forever on threads that do not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{GeneptError, Result};

/// The environment variable that caps the number of kernel threads.
pub const THREADS_ENV: &str = "GENEPT_FAST_NUM_THREADS";

struct Pools {
    pid: u32,
    pools: HashMap<usize, Arc<ThreadPool>>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

/// The cap from `GENEPT_FAST_NUM_THREADS`, when it is set to a positive integer.
fn env_cap() -> Result<Option<usize>> {
    match std::env::var(THREADS_ENV) {
        Ok(s) if !s.trim().is_empty() => match s.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(GeneptError::InvalidArgument(format!(
                "{THREADS_ENV}={s:?} is not a positive integer"
            ))),
        },
        _ => Ok(None),
    }
}

/// Most threads per available core that a call may use (see [`thread_limit`]).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The cores this process may run on (affinity and cgroup quotas included), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The largest thread count a call uses: `MAX_THREADS_PER_CORE` × [`available_cores`].
pub fn thread_limit() -> usize {
    MAX_THREADS_PER_CORE.saturating_mul(available_cores())
}

/// The thread count a call will use: `requested` (must be ≥ 1, capped at [`thread_limit`]) or
/// all cores, then capped by `GENEPT_FAST_NUM_THREADS`.
pub fn resolve_threads(requested: Option<usize>) -> Result<usize> {
    let n = match requested {
        Some(0) => {
            return Err(GeneptError::InvalidArgument(
                "n_threads must be at least 1".into(),
            ))
        }
        Some(n) => n.min(thread_limit()),
        None => available_cores(),
    };
    Ok(match env_cap()? {
        Some(cap) => n.min(cap),
        None => n,
    })
}

/// Runs `f` inside the pool of `n_threads` threads (see [`resolve_threads`]).
pub fn with_pool<R: Send>(
    n_threads: Option<usize>,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    let n = resolve_threads(n_threads)?;
    let pool = pool(n)?;
    pool.install(f)
}

fn pool(n: usize) -> Result<Arc<ThreadPool>> {
    let pid = std::process::id();
    let mut guard = POOLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.as_ref().is_some_and(|p| p.pid != pid) {
        // Inherited across fork: the worker threads are gone. Dropping these pools would try
        // to signal and join them, so forget them (a few kilobytes, once per child).
        if let Some(old) = guard.take() {
            std::mem::forget(old);
        }
    }
    let cache = guard.get_or_insert_with(|| Pools {
        pid,
        pools: HashMap::new(),
    });
    if let Some(p) = cache.pools.get(&n) {
        return Ok(Arc::clone(p));
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("genept-fast-{i}"))
        .build()
        .map_err(|e| GeneptError::ThreadPool(e.to_string()))?;
    let p = Arc::new(p);
    cache.pools.insert(n, Arc::clone(&p));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_is_an_error() {
        assert!(resolve_threads(Some(0)).is_err());
        assert!(resolve_threads(Some(3)).unwrap() >= 1);
    }

    #[test]
    fn huge_thread_counts_are_capped() {
        let n = resolve_threads(Some(usize::MAX)).unwrap();
        assert!(n <= thread_limit());
        assert_eq!(thread_limit(), MAX_THREADS_PER_CORE * available_cores());
    }

    #[test]
    fn pools_run_in_the_requested_size() {
        let n = with_pool(Some(2), || Ok(rayon::current_num_threads())).unwrap();
        assert!((1..=2).contains(&n));
    }
}
