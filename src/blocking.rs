//! Requests that wait on the disk for long (fsync) without taking the last
//! of fuser's workers.
//!
//! fuser 0.18 starts a fixed number of workers when the session starts and
//! cannot add one later. Each worker costs every mount (a thread, a cloned
//! `/dev/fuse` fd, a request buffer, their teardown at unmount), so the
//! mount starts few; but a few workers all waiting in fsync would leave no
//! one to read the next request. So a request that would wait while every
//! other worker waits too runs on a thread of this pool instead, which
//! grows when all its threads are busy and shrinks when they idle: what
//! libfuse's worker pool does, for the requests that need it. Quick
//! requests never come here, and a lone fsync runs on its worker as
//! before, with no hand-off.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// How long a pool thread waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// Pool threads at most: beyond this, jobs queue for a free one.
const MAX_THREADS: usize = 64;

pub struct Blocking {
    /// fuser's workers.
    workers: usize,
    /// Workers inside a blocking request now.
    waiting: AtomicUsize,
    pool: Arc<Pool>,
}

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
    /// Signalled when the last running job ends with none queued.
    settled: Condvar,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
    running: usize,
}

/// Counts a worker as waiting for as long as it lives, panics included.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Blocking {
    /// For a session of `workers` fuser workers.
    pub fn new(workers: usize) -> Blocking {
        Blocking {
            workers: workers.max(1),
            waiting: AtomicUsize::new(0),
            pool: Arc::default(),
        }
    }

    /// Runs `job`, which answers a request and may wait on the disk: on
    /// the calling worker while another worker is left to read requests,
    /// else on the pool.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let counted = Waiting(&self.waiting);
        if before + 1 < self.workers {
            job();
            return;
        }
        drop(counted);
        Pool::submit(&self.pool, Box::new(job));
    }

    /// Waits until no job is queued or running. Called once fuser's
    /// workers are gone, so no new job can come.
    pub fn settle(&self) {
        let mut s = self.pool.state.lock();
        while !s.jobs.is_empty() || s.running > 0 {
            self.pool.settled.wait(&mut s);
        }
    }

    /// Pool threads now, idle ones included (for tests).
    #[cfg(test)]
    fn pool_threads(&self) -> usize {
        self.pool.state.lock().threads
    }

    /// Waits until `n` pool threads are idle (for tests).
    #[cfg(test)]
    fn wait_idle(&self, n: usize) {
        while self.pool.state.lock().idle != n {
            std::thread::yield_now();
        }
    }
}

impl Pool {
    fn submit(pool: &Arc<Pool>, job: Job) {
        let grow = {
            let mut s = pool.state.lock();
            s.jobs.push_back(job);
            // Idle threads already woken for earlier jobs are not free.
            let grow = s.jobs.len() > s.idle && s.threads < MAX_THREADS;
            if grow {
                s.threads += 1;
            } else {
                pool.work.notify_one();
            }
            grow
        };
        if !grow {
            return;
        }
        let p = Arc::clone(pool);
        let spawned = std::thread::Builder::new()
            .name("layerfs-blocking".into())
            .spawn(move || p.serve());
        if let Err(e) = spawned {
            // The job is queued: run it (and any other) here rather than
            // leave its request unanswered.
            log::warn!(
                "cannot start a thread for a blocking request ({e}): running it on the worker"
            );
            let mut s = pool.state.lock();
            s.threads -= 1;
            let jobs: Vec<Job> = s.jobs.drain(..).collect();
            drop(s);
            jobs.into_iter().for_each(Pool::run_one);
        }
    }

    fn serve(&self) {
        loop {
            let job = {
                let mut s = self.state.lock();
                loop {
                    if let Some(job) = s.jobs.pop_front() {
                        s.running += 1;
                        break job;
                    }
                    s.idle += 1;
                    let timed_out = self.work.wait_for(&mut s, IDLE_EXIT).timed_out();
                    s.idle -= 1;
                    if timed_out && s.jobs.is_empty() {
                        s.threads -= 1;
                        return;
                    }
                }
            };
            Pool::run_one(job);
            let mut s = self.state.lock();
            s.running -= 1;
            if s.running == 0 && s.jobs.is_empty() {
                self.settled.notify_all();
            }
        }
    }

    /// A panicking job drops its reply, which answers EIO; the thread
    /// lives on so that the count stays true.
    fn run_one(job: Job) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            log::error!("a blocking request panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Barrier;

    #[test]
    fn a_lone_job_runs_on_the_calling_thread() {
        let b = Blocking::new(4);
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        b.run(move || tx.send(std::thread::current().id()).unwrap());
        assert_eq!(rx.recv().unwrap(), me);
        assert_eq!(b.pool_threads(), 0);
    }

    #[test]
    fn jobs_that_would_take_the_last_worker_run_on_the_pool_at_once() {
        // Two workers, one already waiting: every further job goes to the
        // pool, and all of them run at the same time (none waits for
        // another to end).
        let b = Arc::new(Blocking::new(2));
        let jobs = 6;
        let all_in = Arc::new(Barrier::new(jobs + 1));
        let (tx, rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let worker = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                b.run(move || {
                    release_rx.recv().unwrap();
                })
            })
        };
        while b.waiting.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let me = std::thread::current().id();
        for _ in 0..jobs {
            let (all_in, tx) = (Arc::clone(&all_in), tx.clone());
            b.run(move || {
                all_in.wait();
                tx.send(std::thread::current().id()).unwrap();
            });
        }
        all_in.wait();
        let ran_on: Vec<_> = (0..jobs).map(|_| rx.recv().unwrap()).collect();
        assert!(ran_on.iter().all(|t| *t != me));
        assert_eq!(b.pool_threads(), jobs);
        release_tx.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(b.waiting.load(Ordering::Acquire), 0);
        // Idle threads are reused, not added to.
        b.wait_idle(jobs);
        let (tx, rx) = mpsc::channel();
        let b1 = Blocking {
            workers: 1,
            waiting: AtomicUsize::new(0),
            pool: Arc::clone(&b.pool),
        };
        b1.run(move || tx.send(()).unwrap());
        rx.recv().unwrap();
        assert_eq!(b.pool_threads(), jobs);
    }

    #[test]
    fn settle_waits_for_the_jobs_on_the_pool() {
        let b = Blocking::new(1);
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let done = Arc::clone(&done);
            b.run(move || {
                std::thread::sleep(Duration::from_millis(50));
                done.fetch_add(1, Ordering::AcqRel);
            });
        }
        b.settle();
        assert_eq!(done.load(Ordering::Acquire), 3);
    }

    #[test]
    fn a_panicking_job_leaves_the_counts_true() {
        let b = Blocking::new(3);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.run(|| panic!("test panic"));
        }));
        assert!(r.is_err());
        assert_eq!(b.waiting.load(Ordering::Acquire), 0);
        let b = Blocking::new(1);
        b.run(|| panic!("test panic on the pool"));
        b.wait_idle(1);
        let (tx, rx) = mpsc::channel();
        b.run(move || tx.send(()).unwrap());
        rx.recv().unwrap();
        assert_eq!(b.pool_threads(), 1);
    }
}
