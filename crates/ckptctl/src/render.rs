//! What ckptctl prints: short human text, or JSON with `--json`.

use ckpt_format::{FdKind, FilePolicy, FileSummary, MappingKind, ProcessImage, StdioPeers};
use ckpt_proto::CtlReply;
use serde_json::json;

pub fn print(reply: &CtlReply, as_json: bool) {
    if as_json {
        let v = match reply {
            CtlReply::Checkpointed(r) => serde_json::to_value(r),
            CtlReply::List(l) => serde_json::to_value(l),
            CtlReply::Show { manifest, images } => Ok(json!({ "manifest": manifest, "images": images })),
            CtlReply::Status(s) => Ok(json!({ "processes": s })),
            CtlReply::Restored { id, pids, files } => Ok(json!({ "id": id, "pids": pids, "files": files })),
            CtlReply::Deleted { id } => Ok(json!({ "deleted": id })),
            CtlReply::Loaded { id, bytes } => Ok(json!({ "loaded": id, "bytes": bytes })),
            CtlReply::Pong { version } => Ok(json!({ "version": version })),
            CtlReply::Error { message } => Ok(json!({ "error": message })),
            // Taken by `progress::Reporter` before the answer; never printed here.
            CtlReply::Progress(p) => serde_json::to_value(p),
        };
        println!(
            "{}",
            v.map(|v| v.to_string())
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
        return;
    }
    match reply {
        CtlReply::Checkpointed(r) => println!("{}", r.id),
        CtlReply::List(list) => {
            println!(
                "{:<6} {:<20} {:>5} {:>10} {:>9}",
                "ID", "CREATED (UTC)", "PROCS", "SIZE", "TOOK"
            );
            for c in list {
                println!(
                    "{:<6} {:<20} {:>5} {:>10} {:>9}",
                    c.id,
                    utc(c.created_unix_ms),
                    c.processes,
                    bytes(c.stored_bytes),
                    ms(c.duration_us)
                );
            }
        }
        CtlReply::Show { manifest, images } => {
            println!(
                "checkpoint {}  created {} UTC  took {}  parent {}",
                manifest.id,
                utc(manifest.created_unix_ms),
                ms(manifest.duration_us),
                manifest.parent.as_deref().unwrap_or("-")
            );
            // Connection ends whose peer is not in the checkpoint come back reset.
            let ends: std::collections::HashSet<(&str, &str)> = images
                .iter()
                .flat_map(|(_, i)| i.fds.iter())
                .filter_map(|f| match &f.kind {
                    FdKind::TcpConn { local, peer, .. } => Some((local.as_str(), peer.as_str())),
                    _ => None,
                })
                .collect();
            // Unix socket ends whose peer is not in the checkpoint come back with it closed.
            let unix: std::collections::HashSet<u64> = images
                .iter()
                .flat_map(|(_, i)| i.fds.iter())
                .filter_map(|f| match &f.kind {
                    FdKind::Object {
                        obj: ckpt_kinds::Object::Unix(r),
                        ..
                    } => Some(r.ino),
                    _ => None,
                })
                .collect();
            // Stdio pipes and sockets with their other end on the same host are reconnected.
            let mut peers: std::collections::HashMap<&str, StdioPeers> = Default::default();
            for (host, _) in images {
                peers
                    .entry(host.as_str())
                    .or_insert_with(|| StdioPeers::new(images.iter().filter(|(h, _)| h == host).map(|(_, i)| i)));
            }
            for (host, img) in images {
                let stop = manifest
                    .processes()
                    .find(|(h, p)| *h == host && p.pid == img.pid)
                    .map(|(_, p)| p.stop_us);
                show_process(host, img, stop, &ends, &unix, &peers[host.as_str()]);
            }
            for h in manifest.hosts.iter().filter(|h| !h.files.is_empty()) {
                show_files(&h.host, &h.files);
            }
        }
        CtlReply::Status(procs) => {
            println!("{:<8} {:<12} {:>7} {:<9} COMMAND", "PID", "HOST", "THREADS", "RESTORED");
            for p in procs {
                // A lazy restore still bringing the pages in says how far it is.
                let loading = p.loading.map(|n| format!(" (loading {n}%)")).unwrap_or_default();
                println!(
                    "{:<8} {:<12} {:>7} {:<9} {}{loading}",
                    p.pid,
                    p.host,
                    p.threads,
                    p.restored_from.as_deref().unwrap_or("-"),
                    p.args.join(" ")
                );
            }
        }
        CtlReply::Restored { id, pids, files } => {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            eprintln!("restored checkpoint {id}: pid {}", pids.join(", "));
            for f in files {
                eprintln!("  {f}");
            }
        }
        CtlReply::Deleted { id } => eprintln!("deleted checkpoint {id}"),
        // The summary was printed as the programs began to run; nothing more to say.
        CtlReply::Loaded { .. } => {}
        CtlReply::Pong { version } => println!("ckptd protocol {version}"),
        CtlReply::Error { message } => eprintln!("{message}"),
        CtlReply::Progress(_) => {}
    }
}

fn show_process(
    host: &str,
    img: &ProcessImage,
    stop_us: Option<u64>,
    ends: &std::collections::HashSet<(&str, &str)>,
    unix: &std::collections::HashSet<u64>,
    peers: &StdioPeers,
) {
    println!("\nhost {host}  pid {}  {}", img.pid, img.args.join(" "));
    println!(
        "  exe {}  cwd {}  uid {}  stopped {}",
        img.exe,
        img.cwd,
        img.creds.uid[0],
        stop_us.map(ms).unwrap_or_default()
    );
    let tids: Vec<String> = img.threads.iter().map(|t| format!("{} ({})", t.tid, t.comm)).collect();
    println!("  threads {}: {}", img.threads.len(), tids.join(", "));
    let t = &img.tree;
    let tty = if t.tty_nr == 0 {
        String::new()
    } else {
        format!(
            "  terminal {}:{}",
            t.tty_nr >> 8 & 0xfff,
            (t.tty_nr & 0xff) | (t.tty_nr >> 12 & 0xfff00)
        )
    };
    println!("  parent {}  group {}  session {}{tty}", t.ppid, t.pgid, t.sid);
    for z in &t.zombies {
        println!(
            "  exited child {} ({}), not reaped: {}",
            z.pid,
            z.comm,
            wait_status(z.status)
        );
    }
    println!(
        "  memory: {} mapped, {} stored, {} mappings",
        bytes(img.mapped_bytes()),
        bytes(img.stored_bytes()),
        img.mappings.len()
    );
    for m in &img.mappings {
        let kind = match &m.kind {
            MappingKind::Anon => "anon",
            MappingKind::Heap => "heap",
            MappingKind::Stack => "stack",
            MappingKind::File(_) => "file",
            MappingKind::Saved { .. } => "saved",
            MappingKind::SysvShm { .. } => "sysv shm",
            MappingKind::AioRing(_) => "aio",
        };
        let prot = format!(
            "{}{}{}{}",
            if m.prot & 1 != 0 { 'r' } else { '-' },
            if m.prot & 2 != 0 { 'w' } else { '-' },
            if m.prot & 4 != 0 { 'x' } else { '-' },
            if m.shared { 's' } else { 'p' }
        );
        let name = match &m.kind {
            MappingKind::AioRing(r) => format!("{} ({})", m.name, r.describe()),
            _ => m.name.clone(),
        };
        println!(
            "    {:012x}-{:012x} {prot} {kind:<5} {:>10} {name}",
            m.start,
            m.end,
            bytes(m.stored_bytes()),
        );
    }
    println!("  fds:");
    for f in &img.fds {
        let note = match &f.kind {
            FdKind::Stdio { .. } => "  -> stdio of `ckptctl restore`",
            k if peers.reconnected(k) => "  -> reconnected to its other end in the checkpoint",
            k if peers.to_ckptctl(k) => "  -> other end not in the checkpoint: stdio of `ckptctl restore`",
            FdKind::File {
                policy: Some(FilePolicy::Append),
                ..
            } => "  -> reopened at the end of the log",
            FdKind::TcpConn { local, peer, .. } if !ends.contains(&(peer.as_str(), local.as_str())) => {
                "  -> peer not in the checkpoint: comes back reset"
            }
            FdKind::Object {
                obj: ckpt_kinds::Object::Unix(r),
                ..
            } if ckpt_kinds::unix::peer_outside(r, unix) => "  -> peer not in the checkpoint: comes back closed",
            _ => "",
        };
        let dup = f.dup_of.map(|d| format!(" (same file as fd {d})")).unwrap_or_default();
        println!("    {:>3} {}{dup}{note}", f.fd, f.kind.describe());
        for l in &f.locks {
            println!(
                "        holds a {} -> taken again before the program runs",
                l.describe()
            );
        }
    }
}

/// The files a host's programs wrote to, with their policies.
fn show_files(host: &str, files: &[FileSummary]) {
    println!("\nfiles written on host {host}:");
    for f in files {
        let what = match f.policy {
            FilePolicy::Snapshot => format!(
                "{} ({} stored by this checkpoint) -> put back at restore",
                bytes(f.size),
                bytes(f.stored_bytes)
            ),
            FilePolicy::Append => format!(
                "{} -> checked, cut back to it only if nobody else wrote to it since",
                bytes(f.size)
            ),
            FilePolicy::Keep => "-> left as it is".to_string(),
        };
        println!("  {:<8} {}  {what}", f.policy.name(), f.path);
        let pids: Vec<String> = f.pids.iter().map(|p| p.to_string()).collect();
        println!("           why: {}; held by pid {}", f.why, pids.join(", "));
        if !f.companions.is_empty() {
            println!("           beside it then: {}", f.companions.join(", "));
        }
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// `YYYY-MM-DD HH:MM:SS` for a Unix time in ms (UTC; civil-from-days).
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A `waitpid` status in words.
fn wait_status(st: i32) -> String {
    match st & 0x7f {
        0 => format!("exit code {}", (st >> 8) & 0xff),
        sig => format!("killed by signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_and_bytes() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_564_800_000), "2026-11-25 00:00:00");
        assert_eq!(super::bytes(1536), "1.5 KiB");
    }
}
