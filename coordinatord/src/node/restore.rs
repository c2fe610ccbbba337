//! Restoring this host's processes of a checkpoint: check everything first (images, pids,
//! every file), then put the files back and start one restorer per process with the
//! checkpointed pid, and wait until each program is back and its control thread has
//! reconnected.

use super::netrestore::{self, Key};
use crate::files::restore::{Applied, FileRestore};
use crate::node::Node;
use anyhow::{anyhow, bail, Context};
use ckpt_format::{read_record, FdKind, FileRule, MappingKind, PageStoreReader, ProcessImage, RecordKind};
use ckpt_proto::{EndPlan, Phase, RestoreEnd};
use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

pub struct Planned {
    image: ProcessImage,
    meta: PathBuf,
    /// Page stores in the order of the image's `stores`.
    pages: Vec<PathBuf>,
}

impl Planned {
    pub fn image(&self) -> &ProcessImage {
        &self.image
    }
    pub fn pages(&self) -> &[PathBuf] {
        &self.pages
    }
    pub fn meta(&self) -> &std::path::Path {
        &self.meta
    }
}

/// A restore between its prepare and connect steps on this node.
pub struct PendingRestore {
    id: String,
    planned: Vec<Planned>,
    listeners: HashMap<Key, TcpListener>,
    files: FileRestore,
    tree: ckpt_format::tree::Plan,
    /// A lazy restore: the plan of each process's load (its page stores held open from now on).
    lazy: Option<HashMap<i32, crate::lazy::Plan>>,
}

impl Node {
    /// Reads and verifies every image of this host, checks that pids and tids are free and
    /// that every file can be brought back as its policy says, so that a bad image, a taken pid
    /// or a file changed by someone else changes nothing (every reason in one error); opens a
    /// rendezvous listener for each connection end that will accept.
    pub fn restore_prepare(&self, id: &str, rules: &[FileRule], lazy: bool) -> anyhow::Result<Vec<RestoreEnd>> {
        self.meter.fixed(Phase::CheckingFiles, 0, None);
        let (dir, manifest) = self.store.get(id)?;
        let mut planned = Vec::new();
        let mut problems = Vec::new();
        let mut lazy_stores = lazy.then(HashMap::new);
        if lazy {
            problems.extend(crate::lazy::check());
        }
        if let Some(host) = manifest.hosts.iter().find(|h| h.host == self.host) {
            for p in &host.processes {
                let meta = dir.meta_path(&self.host, p.pid);
                let pages = dir.pages_path(&self.host, p.pid);
                let image: ProcessImage = read_record(&meta, RecordKind::Process)?;
                // Every store of the chain, every run in it, is checked now; the runs of a
                // lazy restore's lazy memory as they are loaded.
                let mut paths = vec![pages];
                paths.extend(image.stores.iter().skip(1).map(|rel| self.store.root().join(rel)));
                let mut readers = Vec::new();
                for (i, path) in paths.iter().enumerate() {
                    let reader = PageStoreReader::open(path, if i == 0 { image.pages_len } else { 0 })?;
                    reader.verify(
                        image
                            .mappings
                            .iter()
                            .filter(|m| !lazy || ckpt_format::lazy::lazy_span(&image, m).is_none())
                            .flat_map(|m| m.pages.iter())
                            .filter(|r| r.store as usize == i),
                    )?;
                    readers.push(reader);
                }
                if let Some(l) = &mut lazy_stores {
                    l.insert(p.pid, crate::lazy::plan(&image, readers)?);
                }
                let pages = paths;
                for t in &image.threads {
                    if !ckpt_sys::spawn::free_within(t.tid, Duration::from_secs(1)) {
                        let who = ckpt_sys::spawn::describe_pid(t.tid);
                        let what = if t.tid == image.pid { "pid" } else { "thread id" };
                        problems.push(format!(
                            "{what} {} of checkpoint {id} is in use by another process ({who}); stop it, then restore again",
                            t.tid
                        ));
                    }
                }
                for z in &image.tree.zombies {
                    if !ckpt_sys::spawn::free_within(z.pid, Duration::from_secs(1)) {
                        let who = ckpt_sys::spawn::describe_pid(z.pid);
                        problems.push(format!(
                            "pid {} (an exited child of {} not reaped yet) of checkpoint {id} is in use by another process ({who}); stop it, then restore again",
                            z.pid, image.pid
                        ));
                    }
                }
                planned.push(Planned { image, meta, pages });
            }
        }
        if let Some(p) = pids_need_capability(&planned) {
            problems.push(p);
        }
        problems.extend(super::sysv::check(&dir, &self.host));
        let images: Vec<&ProcessImage> = planned.iter().map(|p| &p.image).collect();
        let nodes: Vec<ckpt_format::tree::Node> = images
            .iter()
            .map(|i| ckpt_format::tree::Node {
                pid: i.pid,
                comm: &i.comm,
                tree: &i.tree,
            })
            .collect();
        let tree = ckpt_format::tree::plan(&nodes).unwrap_or_else(|e| {
            problems.extend(e);
            Default::default()
        });
        problems.extend(super::pty::check(id, &images));
        let mut files = FileRestore::open(&self.store, &dir, &self.host, rules);
        if let Ok(f) = &mut files {
            // Files the directory undo will rename back are checked where they are now.
            let plan = crate::files::dirs::undo::Plan::make(&self.files.dirs, id, &f.contract_paths());
            f.set_moves(plan.moves());
        }
        match &files {
            Ok(f) => problems.extend(f.check(&images, &self.files.watch).err().unwrap_or_default()),
            Err(e) => problems.push(e.clone()),
        }
        let files = match files {
            Ok(f) if problems.is_empty() => f,
            _ => bail!("{}", problems.join("; ")),
        };
        let mut ends = Vec::new();
        let mut listeners = HashMap::new();
        for p in &planned {
            for f in &p.image.fds {
                if let FdKind::TcpConn {
                    local, peer, queued, ..
                } = &f.kind
                {
                    let acceptor = if local < peer {
                        let l = netrestore::acceptor(local, queued.len())?;
                        let addr = l.local_addr()?.to_string();
                        listeners.insert((local.clone(), peer.clone()), l);
                        Some(addr)
                    } else {
                        None
                    };
                    ends.push(RestoreEnd {
                        local: local.clone(),
                        peer: peer.clone(),
                        acceptor,
                    });
                }
            }
        }
        *self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingRestore {
            id: id.to_string(),
            planned,
            listeners,
            files,
            tree,
            lazy: lazy_stores,
        });
        Ok(ends)
    }

    /// Re-creates the sockets, checks the files again and puts them back, then starts one
    /// restorer per process. Returns the pids and what was done to files.
    pub fn restore_connect(
        &self,
        id: &str,
        plan: &[(String, String, EndPlan)],
    ) -> anyhow::Result<(Vec<i32>, Vec<String>)> {
        let pending = self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut pending) = pending.filter(|p| p.id == id) else {
            bail!("host {}: restore of {id} was not prepared here", self.host);
        };
        self.meter.fixed(Phase::MakingObjects, 0, None);
        let stdio = std::mem::take(&mut *self.restore_stdio.lock().unwrap_or_else(|e| e.into_inner()));
        let plan: HashMap<Key, EndPlan> = plan
            .iter()
            .map(|(l, p, e)| ((l.clone(), p.clone()), e.clone()))
            .collect();
        let images: Vec<&ProcessImage> = pending.planned.iter().map(|p| &p.image).collect();
        let mut sockets = netrestore::make_sockets(&images, &plan, &pending.listeners)
            .map_err(|e| e.context(format!("host {}", self.host)))?;
        sockets.extend(super::pipes::make_pipes(&images, &stdio).context("re-creating pipes")?);
        // What the program did to its directories since: decided now, undone before files are
        // put back (a file made since never meets the restored program).
        let dirs = crate::files::dirs::undo::Plan::make(&self.files.dirs, id, &pending.files.contract_paths());
        pending.files.set_moves(dirs.moves());
        // The files may have changed since every node prepared: check again, then change them.
        let actions = pending
            .files
            .check(&images, &self.files.watch)
            .map_err(|p| anyhow!("restore of {id} refused, nothing was changed: {}", p.join("; ")))?;
        // Objects change what they replace (a named queue, a dead program's socket file): only
        // once the files are known to be restorable.
        sockets.extend(super::objects::make_objects(&images, &stdio)?);
        // Kept until every process has attached its segments (see `sysv::Held`).
        let _sysv = super::sysv::make(&self.store.get(id)?.0, &self.host).context("re-creating SysV IPC objects")?;
        let shared = super::shared_memory::make(&pending.planned, &sockets).context("re-creating shared memory")?;
        sockets.extend(shared);
        let undone = match dirs.apply(&self.files.dirs, id) {
            Ok(notes) => notes,
            Err((e, notes)) => bail!(
                "restore of {id} failed while undoing changes to directories ({e}); {}",
                changed_so_far(&Applied {
                    notes,
                    ..Default::default()
                })
            ),
        };
        let mut applied = match pending.files.apply(&actions) {
            Ok(a) => a,
            Err((e, mut done)) => {
                done.notes.splice(0..0, undone);
                bail!(
                    "restore of {id} failed while putting files back ({e}); {}",
                    changed_so_far(&done)
                )
            }
        };
        applied.notes.splice(0..0, undone.into_iter().chain(dirs.notes));
        // Descriptions several processes share, once their files are back.
        match super::descriptions::make_shared(&images) {
            Ok(s) => sockets.extend(s),
            Err(e) => bail!(
                "restore of {id} failed while reopening a file several processes share ({e:#}); {}",
                changed_so_far(&applied)
            ),
        }
        let mut handed = super::tree::Handed {
            stdio: &stdio,
            sockets: HashMap::new(),
            checks: HashMap::new(),
        };
        for p in &pending.planned {
            let pid = p.image.pid;
            let numbers = p.image.fds.iter().map(|f| f.fd).chain(
                p.image
                    .mappings
                    .iter()
                    .filter_map(|m| m.shared_with.map(|s| s.handed_as())),
            );
            let mine: Vec<(i32, OwnedFd)> = numbers
                .filter_map(|n| sockets.remove(&(pid, n)).map(|s| (n, s)))
                .collect();
            handed.sockets.insert(pid, mine);
            handed
                .checks
                .insert(pid, mapped_checks(&p.image, &pending.files, &applied));
        }
        // The restorers read the images: their reads are the progress of loading pages.
        let lazy = pending
            .lazy
            .take()
            .map(|plans| self.lazy.begin(id, &images, plans, self.restorer.clone()));
        let total = load_bytes(&pending.planned, lazy.is_some());
        let pids: Vec<i32> = pending.planned.iter().map(|p| p.image.pid).collect();
        self.meter.probed(Phase::LoadingPages, total, move || {
            pids.iter().map(|&pid| crate::progress::read_bytes(pid)).sum()
        });
        let made = self.make_tree(id, &pending.planned, &pending.tree, handed, lazy.as_ref());
        if let Some(g) = &lazy {
            g.seal();
        }
        let started = match made {
            Ok(pids) => pids,
            Err(e) => {
                // A page that could not be loaded is the reason the programs died.
                let e = match lazy.as_ref().and_then(|g| g.failed()) {
                    Some(why) => anyhow!("{why}"),
                    None => e,
                };
                let e = e.context(format!("host {}", self.host));
                if applied.notes.is_empty() {
                    return Err(e);
                }
                return Err(anyhow!("{e:#}; {}", changed_so_far(&applied)));
            }
        };
        let roots = pending.tree.roots().collect();
        *self.last_restored.lock().unwrap_or_else(|e| e.into_inner()) = (id.to_string(), started.clone(), roots);
        Ok((started, applied.notes))
    }

    /// The restore failed elsewhere: take back what this node restored for it.
    pub fn restore_abort(&self, id: &str) {
        self.pending_restore.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut last = self.last_restored.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == id {
            let pids = std::mem::take(&mut last.1);
            last.2.clear();
            self.kill_restored(&pids);
        }
    }

    pub(super) fn kill_restored(&self, pids: &[i32]) {
        for pid in pids {
            self.registry.remove(*pid);
            // SAFETY: killing a child we restored.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

/// What the restorers of `planned` read of the images: each one's metadata and the runs of its
/// pages, as stored (compressed or not); not those ckptd loads once the programs run (`lazy`).
fn load_bytes(planned: &[Planned], lazy: bool) -> u64 {
    planned
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(&p.meta).map_or(0, |m| m.len());
            let runs: u64 = p
                .image
                .mappings
                .iter()
                .filter(|m| !lazy || ckpt_format::lazy::lazy_span(&p.image, m).is_none())
                .flat_map(|m| m.pages.iter())
                .map(|r| if r.clen > 0 { r.clen } else { r.len })
                .sum();
            meta + runs
        })
        .sum()
}

/// The restorer's arguments for mapped files that are not unchanged: those put back are
/// checked against what was written (`--mapped-file PATH DEV INO SIZE MTIME_NS`), those kept
/// as they are not at all (`--mapped-any PATH`).
fn mapped_checks(img: &ProcessImage, files: &FileRestore, applied: &Applied) -> Vec<String> {
    let mut args = Vec::new();
    for m in &img.mappings {
        let MappingKind::File(id) = &m.kind else { continue };
        if args.contains(&id.path) {
            continue;
        }
        match (files.mapped_override(&id.path), applied.put_back.get(&id.path)) {
            (Some(true), Some(i)) => args.extend([
                "--mapped-file".to_string(),
                id.path.clone(),
                i.dev.to_string(),
                i.ino.to_string(),
                i.size.to_string(),
                i.mtime_ns.to_string(),
            ]),
            (Some(false), _) => args.extend(["--mapped-any".to_string(), id.path.clone()]),
            _ => {}
        }
    }
    args
}

fn changed_so_far(done: &Applied) -> String {
    if done.notes.is_empty() {
        "no file was changed".to_string()
    } else {
        format!("files were already changed: {}", done.notes.join("; "))
    }
}

/// Choosing a pid (clone3 `set_tid`) needs `CAP_CHECKPOINT_RESTORE` (or root's
/// `CAP_SYS_ADMIN`): said before anything is changed, rather than by the first restorer.
fn pids_need_capability(planned: &[Planned]) -> Option<String> {
    use ckpt_sys::caps::{effective, CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN};
    if planned.is_empty() || effective(CAP_CHECKPOINT_RESTORE) || effective(CAP_SYS_ADMIN) {
        return None;
    }
    let pids: Vec<String> = planned.iter().map(|p| p.image.pid.to_string()).collect();
    let which = match pids.len() {
        1 => format!("pid {}", pids[0]),
        _ => format!("pids {}", pids.join(", ")),
    };
    Some(format!(
        "restoring {which} needs CAP_CHECKPOINT_RESTORE, which this ckptd does not hold: run ckptd as root, or start it with that capability (see \"A ckptd for another user\" in the README)"
    ))
}
