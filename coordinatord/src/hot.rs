//! A helper thread kept on a CPU while programs are parked. Waking a sleeping thread can take
//! longer than the work it would share (an idle core may have to be woken first, which in a
//! virtual machine costs up to milliseconds), so the helper is warmed before the stop: it
//! polls for work, yielding the CPU to anything runnable, until the stop's work is done (or
//! for 20 ms at most). The stop then splits its one job that grows with the memory size, the
//! page-table scan, in two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Helper {
    /// The job handed over, if any.
    job: Mutex<Option<Job>>,
    /// While set (to a new number each time), the helper polls instead of sleeping.
    warm: Mutex<Option<u64>>,
    generation: AtomicU64,
    woken: Condvar,
    polling: AtomicBool,
}

fn helper() -> &'static Helper {
    static H: OnceLock<&'static Helper> = OnceLock::new();
    H.get_or_init(|| {
        let h: &'static Helper = Box::leak(Box::new(Helper {
            job: Mutex::new(None),
            warm: Mutex::new(None),
            generation: AtomicU64::new(0),
            woken: Condvar::new(),
            polling: AtomicBool::new(false),
        }));
        let spawned = std::thread::Builder::new()
            .name("ckptd-hot".into())
            .spawn(move || h.serve());
        if let Err(e) = spawned {
            tracing::warn!("no helper thread for the stop: {e}");
        }
        h
    })
}

/// Polling longer than this is no longer worth a core: a stop that long does not hinge on a
/// split scan.
const POLL_MAX: Duration = Duration::from_millis(20);

impl Helper {
    fn serve(&self) {
        let mut served = 0u64;
        loop {
            {
                let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
                while warm.is_none_or(|g| g == served) {
                    warm = self.woken.wait(warm).unwrap_or_else(|e| e.into_inner());
                }
                served = warm.unwrap_or(served);
            }
            self.polling.store(true, Ordering::Release);
            let until = Instant::now() + POLL_MAX;
            while *self.warm.lock().unwrap_or_else(|e| e.into_inner()) == Some(served) && Instant::now() < until {
                let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
                match job {
                    Some(j) => j(),
                    None => std::thread::yield_now(),
                }
            }
            self.polling.store(false, Ordering::Release);
        }
    }

    fn set_warm(&self, on: bool) {
        let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            let next = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            *warm = Some(next);
            self.woken.notify_one();
        } else {
            *warm = None;
        }
    }
}

/// Keeps the helper polling while it lives: made before programs are parked, dropped once
/// they run again.
pub struct Warm(());

pub fn warm() -> Warm {
    helper().set_warm(true);
    Warm(())
}

impl Drop for Warm {
    fn drop(&mut self) {
        helper().set_warm(false);
    }
}

/// Runs `a` here and `b` on the helper when it is polling and free, else both here; returns
/// both results (`b`'s is None if it panicked).
pub fn join<A, B>(a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send + 'static) -> (A, Option<B>)
where
    B: Send + 'static,
{
    let h = helper();
    if !h.polling.load(Ordering::Acquire) {
        return (a(), Some(b()));
    }
    let out: Arc<(Mutex<Option<B>>, AtomicBool)> = Arc::new((Mutex::new(None), AtomicBool::new(false)));
    let slot = out.clone();
    let mut b = Some(b);
    {
        let mut job = h.job.lock().unwrap_or_else(|e| e.into_inner());
        if job.is_none() {
            if let Some(b) = b.take() {
                *job = Some(Box::new(move || {
                    // A panic must still mark the job done, or its caller would wait forever.
                    let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(b)).ok();
                    *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
                    slot.1.store(true, Ordering::Release);
                }));
            }
        }
    }
    let ra = a();
    if let Some(b) = b {
        return (ra, Some(b()));
    }
    loop {
        if out.1.load(Ordering::Acquire) {
            return (ra, out.0.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        // Not taken yet (the helper is busy or gone): take a job back and run it here.
        let taken = h.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(j) => j(),
            None => std::thread::yield_now(),
        }
    }
}
