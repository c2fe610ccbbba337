//! The process tree of a host's checkpoint: each process's place in it (parent, process group,
//! session, controlling terminal, the children it has not reaped yet) and the plan that re-creates
//! it. The plan is computed at checkpoint time too, so that a tree ckpt cannot re-create is refused
//! then, not at restore.
//!
//! How a tree comes back: the topmost processes (whose parent is not in the checkpoint) are
//! started by ckptd, every other one is forked by its own parent before that parent becomes the
//! program again, so `wait`, `getppid` and `SIGCHLD` hold. Sessions are made at fork (a child
//! inherits its parent's), process groups are joined once every process exists (group leaders
//! first), zombies are forked last and exit at once with their status. A topmost process is
//! re-parented to the restoring side: it leads a session and a group of its own, and its
//! descendants that shared its outside session or group share its new ones.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One process's place in the tree, from /proc/PID/stat at the checkpoint instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tree {
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The signal its parent gets when it ends (clone's exit signal; 0 for none).
    pub exit_signal: i32,
    /// Its controlling terminal's device number (0 for none) and that terminal's foreground
    /// process group (-1 for none).
    pub tty_nr: u64,
    pub tpgid: i32,
    /// Children that have exited and that it has not reaped yet.
    pub zombies: Vec<Zombie>,
}

/// An exited child not reaped yet: re-created as a child that exits at once the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    pub comm: String,
    pub pgid: i32,
    pub sid: i32,
    pub exit_signal: i32,
    /// Its status as `waitpid` reports it.
    pub status: i32,
}

/// How one process (live or zombie) is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Birth {
    pub pid: i32,
    /// Its name (a zombie takes it before it ends).
    pub comm: String,
    /// The restored process that forks it; `None`: ckptd starts it (a topmost process).
    pub parent: Option<i32>,
    pub exit_signal: i32,
    /// It leads a session: `setsid` right after the fork.
    pub setsid: bool,
    /// It leads its process group (and no session): `setpgid(0, 0)` right after the fork.
    pub lead_group: bool,
    /// The group it joins once its leader exists; `None`: the one it is born in.
    pub join: Option<i32>,
    /// For a zombie: the status it exits with.
    pub zombie: Option<i32>,
}

/// A session leader's controlling terminal, taken again once every group exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub leader: i32,
    pub tty_nr: u64,
    /// The foreground group to set, if the terminal had one in the session.
    pub foreground: Option<i32>,
}

/// The order a host's tree is made in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Live processes, each after its parent.
    pub live: Vec<Birth>,
    /// After every live process exists, in this order: zombies leading a group, live processes
    /// joining a group, the other zombies (which join theirs before they exit).
    pub groups: Vec<Birth>,
    pub terminals: Vec<Terminal>,
    /// Each process's session and group after the restore, where they differ (topmost
    /// processes lead new ones).
    pub remapped: HashMap<i32, (i32, i32)>,
}

impl Plan {
    pub fn roots(&self) -> impl Iterator<Item = i32> + '_ {
        self.live.iter().filter(|b| b.parent.is_none()).map(|b| b.pid)
    }
}

/// A process as the plan sees it.
pub struct Node<'a> {
    pub pid: i32,
    pub comm: &'a str,
    pub tree: &'a Tree,
}

/// The plan that re-creates the tree of `procs` (one host's processes), or every reason it
/// cannot be re-created exactly, each naming the process.
pub fn plan(procs: &[Node]) -> Result<Plan, Vec<String>> {
    let by_pid: HashMap<i32, &Node> = procs.iter().map(|n| (n.pid, n)).collect();
    let mut children: HashMap<i32, Vec<&Node>> = HashMap::new();
    for n in procs {
        if by_pid.contains_key(&n.tree.ppid) && n.tree.ppid != n.pid {
            children.entry(n.tree.ppid).or_default().push(n);
        }
    }
    // Groups and sessions that processes of this host lead (a zombie leader keeps its group).
    let mut leaders: HashMap<i32, i32> = HashMap::new(); // pgid -> sid
    for n in procs {
        if n.tree.pgid == n.pid {
            leaders.insert(n.pid, n.tree.sid);
        }
        for z in &n.tree.zombies {
            if z.pgid == z.pid {
                leaders.insert(z.pid, z.sid);
            }
        }
    }
    let mut problems = Vec::new();
    let mut plan = Plan::default();
    // (sid, pgid) after the restore, for each live process.
    let mut now: HashMap<i32, (i32, i32)> = HashMap::new();
    let mut roots: Vec<&Node> = procs
        .iter()
        .filter(|n| !by_pid.contains_key(&n.tree.ppid) || n.tree.ppid == n.pid)
        .collect();
    roots.sort_by_key(|n| n.pid);
    let mut joins = Vec::new();
    let mut zombie_leaders = Vec::new();
    let mut zombie_members = Vec::new();
    let mut stack: Vec<&Node> = roots.into_iter().rev().collect();
    while let Some(n) = stack.pop() {
        let t = n.tree;
        let parent = by_pid.get(&t.ppid).filter(|_| t.ppid != n.pid).map(|p| p.pid);
        let mut birth = Birth {
            pid: n.pid,
            comm: n.comm.to_string(),
            parent,
            exit_signal: t.exit_signal,
            setsid: false,
            lead_group: false,
            join: None,
            zombie: None,
        };
        let (sid, pgid) = match parent {
            // Topmost: a session and group of its own on the restoring side.
            None => {
                birth.setsid = true;
                (n.pid, n.pid)
            }
            Some(pp) => {
                let ptree = by_pid[&pp].tree;
                let (psid, ppgid) = now[&pp];
                let sid = if t.sid == n.pid {
                    birth.setsid = true;
                    n.pid
                } else if t.sid == ptree.sid {
                    psid
                } else {
                    problems.push(format!(
                        "process {} ({}) is in session {} but its parent {} is in session {}: ckpt re-creates a session only through its leader",
                        n.pid, n.comm, t.sid, pp, ptree.sid
                    ));
                    psid
                };
                let pgid = if birth.setsid || t.pgid == n.pid {
                    birth.lead_group = !birth.setsid;
                    n.pid
                } else if t.pgid == ptree.pgid {
                    ppgid
                } else if leaders.get(&t.pgid) == Some(&t.sid) {
                    birth.join = Some(t.pgid);
                    t.pgid
                } else {
                    problems.push(no_leader(n.pid, n.comm, t.pgid));
                    ppgid
                };
                (sid, pgid)
            }
        };
        now.insert(n.pid, (sid, pgid));
        if (sid, pgid) != (t.sid, t.pgid) {
            plan.remapped.insert(n.pid, (sid, pgid));
        }
        if birth.join.is_some() {
            joins.push(birth.clone());
        }
        plan.live.push(birth);
        for z in &t.zombies {
            let mut zb = Birth {
                pid: z.pid,
                comm: z.comm.clone(),
                parent: Some(n.pid),
                exit_signal: z.exit_signal,
                setsid: z.sid == z.pid,
                lead_group: z.pgid == z.pid && z.sid != z.pid,
                join: None,
                zombie: Some(z.status),
            };
            if libc_core_dumped(z.status) {
                problems.push(format!(
                    "process {} ({}) has not reaped its child {} ({}), which dumped core: ckpt cannot make a child end that way; let it reap it, then checkpoint again",
                    n.pid, n.comm, z.pid, z.comm
                ));
            }
            if z.sid != z.pid && z.sid != t.sid {
                problems.push(format!(
                    "process {} ({}) has not reaped its child {} ({}), which is in another session ({}) that it does not lead",
                    n.pid, n.comm, z.pid, z.comm, z.sid
                ));
            }
            if zb.setsid || zb.lead_group {
                zombie_leaders.push(zb);
            } else {
                if z.pgid != t.pgid {
                    if leaders.get(&z.pgid) == Some(&z.sid) {
                        zb.join = Some(z.pgid);
                    } else {
                        problems.push(no_leader(z.pid, &z.comm, z.pgid));
                    }
                }
                zombie_members.push(zb);
            }
        }
        // A topmost leader's terminal was the user's, outside the checkpoint: it gets the
        // restoring ckptctl's stdio instead, as its new session's members do.
        if parent.is_some() && t.sid == n.pid && t.tty_nr != 0 {
            plan.terminals.push(Terminal {
                leader: n.pid,
                tty_nr: t.tty_nr,
                foreground: (t.tpgid > 0).then_some(t.tpgid),
            });
        }
        let mut kids = children.get(&n.pid).cloned().unwrap_or_default();
        kids.sort_by_key(|k| std::cmp::Reverse(k.pid));
        stack.extend(kids);
    }
    if plan.live.len() != procs.len() {
        // A loop in the parent links: impossible for a real tree, so the images are damaged.
        problems.push("the checkpoint's parent links form a loop; its images are damaged".into());
    }
    // A group joined must be one the joiner's session holds after the restore.
    for j in joins.iter().chain(&zombie_members) {
        let Some(g) = j.join else { continue };
        let leader_session = now.get(&g).map(|(s, _)| *s).or_else(|| {
            zombie_leaders
                .iter()
                .find(|z| z.pid == g)
                .and_then(|z| z.parent)
                .and_then(|p| now.get(&p).map(|(s, _)| *s))
        });
        let joiner_session = now
            .get(&j.pid)
            .or_else(|| j.parent.as_ref().and_then(|p| now.get(p)))
            .map(|(s, _)| *s);
        if leader_session.is_some() && leader_session != joiner_session {
            problems.push(format!(
                "process {} is in process group {}, whose leader comes back in another session (its parent is not in the checkpoint)",
                j.pid, g
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    plan.groups = zombie_leaders.into_iter().chain(joins).chain(zombie_members).collect();
    Ok(plan)
}

fn no_leader(pid: i32, comm: &str, pgid: i32) -> String {
    format!(
        "process {pid} ({comm}) is in process group {pgid}, whose leader is neither its parent's group nor in the checkpoint; ckpt cannot re-create a group without its leader"
    )
}

/// `WCOREDUMP` of a wait status.
fn libc_core_dumped(status: i32) -> bool {
    status & 0x7f != 0 && status & 0x7f != 0x7f && status & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ppid: i32, pgid: i32, sid: i32) -> Tree {
        Tree {
            ppid,
            pgid,
            sid,
            exit_signal: 17,
            tty_nr: 0,
            tpgid: -1,
            zombies: Vec::new(),
        }
    }

    fn node<'a>(pid: i32, tree: &'a Tree) -> Node<'a> {
        Node { pid, comm: "x", tree }
    }

    /// `bash -c 'a | b'` started from an outside shell: bash is topmost, its children follow it
    /// into its new session and group.
    #[test]
    fn pipeline_under_outside_session() {
        let (b, a, c) = (t(1, 500, 400), t(10, 500, 400), t(10, 500, 400));
        let p = plan(&[node(11, &a), node(10, &b), node(12, &c)]).unwrap();
        let order: Vec<i32> = p.live.iter().map(|b| b.pid).collect();
        assert_eq!(order, vec![10, 11, 12]);
        assert!(p.live[0].setsid && p.live[0].parent.is_none());
        assert_eq!(p.live[1].parent, Some(10));
        assert!(!p.live[1].setsid && p.live[1].join.is_none());
        assert_eq!(p.remapped[&11], (10, 10));
        assert_eq!(p.roots().collect::<Vec<_>>(), vec![10]);
    }

    /// An interactive shell in a pty (started by a terminal program, say): its jobs lead groups, a pipeline's second process joins
    /// the first one's group, a zombie leader is made before its members join.
    #[test]
    fn job_control_groups_and_zombies() {
        let top = t(1, 19, 19);
        let mut sh = t(19, 20, 20);
        sh.tty_nr = (136 << 8) | 3;
        sh.tpgid = 21;
        sh.zombies.push(Zombie {
            pid: 23,
            comm: "z".into(),
            pgid: 23,
            sid: 20,
            exit_signal: 17,
            status: 0x100,
        });
        let a = t(20, 21, 20);
        let b = t(20, 21, 20);
        let c = t(20, 23, 20);
        let p = plan(&[node(19, &top), node(20, &sh), node(21, &a), node(22, &b), node(24, &c)]).unwrap();
        assert!(p.live[1].setsid);
        assert!(p.live[2].lead_group);
        assert_eq!(p.live[3].join, Some(21));
        let groups: Vec<(i32, Option<i32>)> = p.groups.iter().map(|b| (b.pid, b.join)).collect();
        assert_eq!(groups, vec![(23, None), (22, Some(21)), (24, Some(23))]);
        assert_eq!(p.groups[0].zombie, Some(0x100));
        assert_eq!(p.terminals[0].foreground, Some(21));
        assert!(p.remapped.is_empty());
    }

    #[test]
    fn leaderless_group_is_refused() {
        let sh = t(1, 20, 20);
        let a = t(20, 77, 20);
        let e = plan(&[node(20, &sh), node(21, &a)]).unwrap_err();
        assert!(e[0].contains("process group 77"), "{e:?}");
    }

    #[test]
    fn session_not_from_parent_is_refused() {
        let sh = t(1, 20, 20);
        let a = t(20, 21, 21);
        let b = t(21, 21, 21);
        let c = t(22, 21, 20);
        let e = plan(&[node(20, &sh), node(21, &a), node(22, &b), node(23, &c)]).unwrap_err();
        assert!(e[0].contains("process 23") && e[0].contains("session 20"), "{e:?}");
    }
}
