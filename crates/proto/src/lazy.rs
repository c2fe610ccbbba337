//! The messages of a lazy restore (`ckptctl restore --lazy`) between the restorer, ckptd and
//! the guard that ckptd starts for it.

use serde::{Deserialize, Serialize};

/// Restorer → ckptd, with `--lazy`, just before its answer to `TreeStep::Build`: the address
/// ranges its last steps register for missing-page faults, and (when there are any) the
/// userfaultfd they are registered with, riding along. ckptd serves it from then on: the
/// restorer's own copy is closed before the program runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LazyHandover {
    pub ranges: Vec<(u64, u64)>,
}

/// ckptd → the guard of a lazy restore (`ckpt-restore --lazy-guard`), which holds a copy of
/// every userfaultfd ckptd serves so that none is released (its missing pages would then read
/// as zeros) should ckptd end; if ckptd goes away before the load is done, the guard kills the
/// processes still loading and what they started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GuardMsg {
    /// Process `pid` loads lazily; its userfaultfd rides along.
    Watch { pid: i32 },
    /// A child `pid` forked (its `space`-th since, from 1) holds memory still loading; its
    /// userfaultfd rides along.
    Forked { pid: i32, space: u64 },
    /// That child has ended (or exec'd): its userfaultfd is of no use any more.
    Gone { pid: i32, space: u64 },
    /// Every page of `pid` (and of the children it forked meanwhile) is in: the guard closes
    /// its copies and answers `Released`.
    Release { pid: i32 },
}

/// Guard → ckptd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GuardAck {
    Released { pid: i32 },
}
