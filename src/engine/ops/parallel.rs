//! Splitting a custom op's output rows over the plan's thread pool.
//!
//! tract's `par_chunks_mut` cuts the rows into four chunks per thread, which suits its
//! own kernels. The 2:4 kernel works in blocks of up to 48 token rows and streams all
//! its weights once per block, and the attention kernel transposes a head's keys once
//! per chunk: both lose on small chunks (on 2 threads the 2:4 model gained 1.12x over
//! 1 thread where tract's dense graph gained 1.30x). Here each thread gets one chunk,
//! its height a multiple of `align` rows.

use rayon::prelude::*;
use tract_core::internal::*;
use tract_linalg::multithread::{current_tract_executor, Executor};

/// Below this much work (multiply-adds or elements) the split costs more than it
/// saves (tract's own default for the same decision).
pub const MIN_WORK: usize = 32_768;

/// Runs `f(first_row, rows)` over `out`, split into one chunk per thread of the
/// executor the plan installed (inline when there is none, or for small work).
pub fn par_rows<T: Send>(
    out: &mut [T],
    row_len: usize,
    align: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let rows = out.len() / row_len.max(1);
    if rows < 2 || work < MIN_WORK {
        return f(0, out);
    }
    let split = |out: &mut [T], threads: usize| -> TractResult<()> {
        let chunk = rows.div_ceil(threads).next_multiple_of(align.max(1));
        out.par_chunks_mut(chunk * row_len.max(1))
            .enumerate()
            .try_for_each(|(i, c)| f(i * chunk, c))
    };
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
            let threads = pool.current_num_threads();
            pool.install(|| split(out, threads))
        }
        Executor::RayonGlobal => split(out, rayon::current_num_threads()),
        _ => f(0, out),
    }
}

/// Threads of the executor the plan installed (1 when there is none).
pub fn threads() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        Executor::RayonGlobal => rayon::current_num_threads().max(1),
        _ => 1,
    }
}

/// Runs `each(0..parts)` on the executor the plan installed (inline without one).
pub fn par_parts(parts: usize, each: &(dyn Fn(usize) + Sync)) {
    let run = || (0..parts).into_par_iter().for_each(each);
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => pool.install(run),
        Executor::RayonGlobal => run(),
        _ => (0..parts).for_each(each),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tract_linalg::multithread::multithread_tract_scope;

    fn fill(threads: usize, rows: usize, align: usize) -> (Vec<usize>, usize) {
        let mut out = vec![usize::MAX; rows * 3];
        let calls = AtomicUsize::new(0);
        let exec = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        multithread_tract_scope(exec, || {
            par_rows(&mut out, 3, align, MIN_WORK, |first, chunk| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert!(first.is_multiple_of(align) || chunk.is_empty());
                for (i, v) in chunk.iter_mut().enumerate() {
                    *v = first * 3 + i;
                }
                Ok(())
            })
        })
        .expect("par_rows");
        (out, calls.into_inner())
    }

    #[test]
    fn every_row_once_one_chunk_per_thread() {
        for (threads, rows, align) in [(1, 10, 8), (2, 196, 8), (2, 7, 6), (3, 100, 6), (2, 588, 6)]
        {
            let (out, calls) = fill(threads, rows, align);
            assert!(
                out.iter().enumerate().all(|(i, &v)| v == i),
                "{threads} {rows}"
            );
            assert!(calls <= threads, "{calls} chunks for {threads} threads");
        }
    }
}
