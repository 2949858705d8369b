//! Workers over contiguous parts of an output slice, on rayon's persistent
//! pool: a call starts no thread (spawning one per call cost 20–50 µs, a
//! third of a 64 × 4096 call), and a caller already inside rayon shares its
//! workers instead of oversubscribing the cores.

/// Number of workers: the size of rayon's pool.
pub(crate) fn available() -> usize {
    // the pool the work runs on (it honours RAYON_NUM_THREADS); asked per
    // call, so never `available_parallelism`, which reads cgroup files each
    // time (~70 us per call here)
    rayon_core::current_num_threads()
}

/// Calls `f(first_index, part)` on `threads` contiguous, nearly equal parts of
/// `out`, one task each (the first on the calling thread). Which thread
/// computes an element never changes what is computed for it.
pub(crate) fn split_mut<T: Send>(
    out: &mut [T],
    threads: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let n = out.len();
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        f(0, out);
        return;
    }
    let per = n.div_ceil(threads);
    let f = &f;
    let mut parts = out.chunks_mut(per).enumerate();
    let first = parts.next();
    // in place: the calling thread takes the first part itself
    rayon_core::in_place_scope(|s| {
        for (k, part) in parts {
            s.spawn(move |_| f(k * per, part));
        }
        if let Some((_, part)) = first {
            f(0, part);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_once() {
        for threads in 1..6 {
            for n in [0usize, 1, 2, 5, 17] {
                let mut v = vec![0usize; n];
                split_mut(&mut v, threads, |i0, part| {
                    for (k, x) in part.iter_mut().enumerate() {
                        *x += i0 + k + 1;
                    }
                });
                assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
            }
        }
    }
}
