//! Programs whose processes come and go (issue 11): a C project that `make -j2` builds, and
//! checkpoints taken again and again while such a program runs. Checkpoint ids are kept, so
//! that a test can restore any of them.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::*;

pub const MAKE: &str = "/usr/bin/make";
pub const BASH: &str = "/bin/bash";

/// A C project of `files` sources, each a function whose `-O2` compile takes a while (`loops`
/// loops in one body: the optimiser's time grows faster than the size), plus `main.c` that
/// prints what they compute. The build is deterministic: same sources, same relative paths,
/// no debug information, a fixed random seed per object. gcc runs its stages joined by pipes
/// (`-pipe`): its temporary files between stages are held by no process while one stage has
/// ended and the next not yet begun, so a checkpoint taken then could not hold them; and one
/// `cc1` is writing at the checkpoint (a log by its policy, whose content is not saved) is
/// removed by gcc once `as` has read it, so a restore of that checkpoint after the build went
/// on is refused (the log is gone): without `-pipe`, 4 of 4 tries of
/// `make_j2_killed_after_third_checkpoint_and_restored` were.
pub struct CProject {
    dir: tempfile::TempDir,
}

impl CProject {
    pub fn generate(files: usize, loops: usize) -> Result<CProject> {
        let dir = tempfile::Builder::new().prefix("ckpt-make-").tempdir()?;
        let mut objs = String::new();
        let mut main = String::from("#include <stdio.h>\n");
        let mut calls = String::new();
        for f in 0..files {
            let mut src = format!("unsigned long f{f}(unsigned long a, unsigned long b) {{\n  unsigned long s = a;\n");
            for i in 0..loops {
                writeln!(
                    src,
                    "  for (unsigned long i{i} = 0; i{i} < b; i{i}++) s = s * {}u + ((s >> {}) ^ i{i} ^ {f}u);",
                    i * 2 + 3,
                    i % 13 + 1
                )?;
            }
            src.push_str("  return s;\n}\n");
            std::fs::write(dir.path().join(format!("f{f}.c")), src)?;
            write!(objs, " f{f}.o")?;
            writeln!(main, "unsigned long f{f}(unsigned long, unsigned long);")?;
            writeln!(calls, "  s ^= f{f}(s + {f}, 3);")?;
        }
        write!(
            main,
            "int main(void) {{\n  unsigned long s = 1;\n{calls}  printf(\"%lu\\n\", s);\n  return 0;\n}}\n"
        )?;
        std::fs::write(dir.path().join("main.c"), main)?;
        let makefile = format!(
            "CC = gcc\nCFLAGS = -O2 -pipe -frandom-seed=$@\nOBJS ={objs} main.o\n\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n\
             %.o: %.c\n\t$(CC) $(CFLAGS) -c $< -o $@\n"
        );
        std::fs::write(dir.path().join("Makefile"), makefile)?;
        Ok(CProject { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many objects the build has made so far.
    pub fn objects(&self) -> usize {
        std::fs::read_dir(self.dir())
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "o"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The program the build makes.
    pub fn binary(&self) -> PathBuf {
        self.dir().join("prog")
    }

    /// Builds it with `make -j2` outside ckpt; how long it took.
    pub fn build_clean(&self) -> Result<Duration> {
        let t = Instant::now();
        let out = run_with_timeout(
            Command::new(MAKE).arg("-j2").arg("-C").arg(self.dir()),
            Duration::from_secs(300),
        )?;
        if !out.status.success() {
            bail!("the clean build failed\n{}", describe(&out));
        }
        Ok(t.elapsed())
    }
}

/// Takes `n` checkpoints, `every` apart, each while `running()` holds (fails saying which one
/// failed, or that the program was done before all were taken); the stats of each.
pub fn checkpoint_while(d: &Daemon, n: usize, every: Duration, running: impl Fn() -> bool) -> Result<Vec<CkptStats>> {
    let mut taken = Vec::new();
    for i in 1..=n {
        std::thread::sleep(every);
        if !running() {
            bail!("the program was done before checkpoint {i} of {n}\n{}", d.context());
        }
        taken.push(noted_checkpoint(d, &format!("checkpoint {i} of {n}"))?);
    }
    Ok(taken)
}

/// Takes one checkpoint as soon as the build of `project` has made each of `counts` objects
/// (however fast or slow the machine is today); fails if `running()` stops holding first.
pub fn checkpoint_at_objects(
    d: &Daemon,
    project: &CProject,
    counts: &[usize],
    running: impl Fn() -> bool,
) -> Result<Vec<CkptStats>> {
    let mut taken = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(300);
        while project.objects() < n {
            if !running() || Instant::now() > deadline {
                bail!(
                    "the build was done or stuck before checkpoint {} (at {n} objects; it has {})\n{}",
                    i + 1,
                    project.objects(),
                    d.context()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        taken.push(noted_checkpoint(d, &format!("checkpoint {} at {n} objects", i + 1))?);
    }
    Ok(taken)
}

/// `ckptctl checkpoint --json`, its figures noted under `what`.
fn noted_checkpoint(d: &Daemon, what: &str) -> Result<CkptStats> {
    let st = d.checkpoint_json(&[]).with_context(|| what.to_string())?;
    note!(
        "{what}: id {}, {} processes, {} ms, stopped {} µs",
        st.id,
        st.processes,
        st.duration_us / 1000,
        st.max_stop_us
    );
    Ok(st)
}
