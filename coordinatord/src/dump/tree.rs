//! A parked process's place in the tree: parent, group, session, terminal, and the children it
//! has not reaped yet (read here; re-created as `ckpt_format::tree` plans).

use super::DumpError;
use ckpt_format::tree::{Node, Tree, Zombie};
use ckpt_format::ProcessImage;
use ckpt_sys::procfs;

pub fn read(pid: i32) -> Result<Tree, DumpError> {
    let perr = |e| DumpError::Proc(e, pid);
    let st = procfs::stat_tree(pid).map_err(perr)?;
    let mut zombies = Vec::new();
    for child in procfs::children(pid).map_err(perr)? {
        // A child that is gone by now was reaped by a thread of this process that is not
        // parked yet… impossible: every thread is parked. One that vanished was reaped by
        // ckptd as a re-parented orphan, never this process's.
        let Ok(c) = procfs::stat_tree(child) else { continue };
        if c.state != 'Z' || procfs::alive(child) {
            continue;
        }
        zombies.push(Zombie {
            pid: child,
            comm: std::fs::read_to_string(format!("/proc/{child}/comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default(),
            pgid: c.pgrp,
            sid: c.session,
            exit_signal: c.exit_signal,
            status: c.exit_code,
        });
    }
    Ok(Tree {
        ppid: st.ppid,
        pgid: st.pgrp,
        sid: st.session,
        exit_signal: st.exit_signal,
        tty_nr: st.tty_nr,
        tpgid: st.tpgid,
        zombies,
    })
}

/// Why the tree of a host's images could not be re-created exactly, if it could not: checked
/// at checkpoint time so that such a checkpoint is refused rather than restored differently.
pub fn check(images: &[&mut ProcessImage]) -> Vec<String> {
    let nodes: Vec<Node> = images
        .iter()
        .map(|i| Node {
            pid: i.pid,
            comm: &i.comm,
            tree: &i.tree,
        })
        .collect();
    ckpt_format::tree::plan(&nodes).err().unwrap_or_default()
}
