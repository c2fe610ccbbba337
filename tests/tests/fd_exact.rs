//! More kinds of fds come back exactly or are refused by name (issue 12): each example sets up
//! every mode of its kind, is checkpointed, killed and restored twice, and checks its own state
//! when asked (SIGUSR1): `state ok`, or an `INVARIANT` line naming what changed. Kinds ckpt
//! cannot give back exactly refuse the checkpoint, naming the process and the fd.

use anyhow::Result;
use ckpt_tests::*;

#[test]
fn pipes_keep_flags_capacity_bytes_packets_and_closed_ends() -> Result<()> {
    require_root!();
    survives_two_restores("pipe_modes", &[])
}

#[test]
fn o_path_fds_of_files_dirs_and_symlinks() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-opath-").tempdir()?;
    survives_two_restores("opath_state", &[path_arg(dir.path())?])
}

#[test]
fn proc_files_of_the_process_and_its_child() -> Result<()> {
    require_root!();
    survives_two_restores("proc_self", &[])
}

#[test]
fn pidfds_of_self_a_live_child_and_a_zombie() -> Result<()> {
    require_root!();
    survives_two_restores("pidfd_state", &[])
}

#[test]
fn memfds_keep_name_seals_content_offsets_and_stay_one_with_their_mapping() -> Result<()> {
    require_root!();
    survives_two_restores("memfd_state", &[])
}

#[test]
fn a_huge_page_memfd_is_refused_by_name() -> Result<()> {
    require_root!();
    refused("refused_kinds", &["memfd-huge"], &["fd ", "/memfd:huge", "MFD_HUGETLB"])
}

#[test]
fn fanotify_groups_keep_flags_and_marks() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-fanotify-").tempdir()?;
    survives_two_restores("fanotify_state", &[path_arg(dir.path())?])
}

#[test]
fn a_fanotify_group_with_events_queued_is_refused_by_name() -> Result<()> {
    require_root!();
    refused(
        "refused_kinds",
        &["fanotify"],
        &["fd ", "fanotify group", "not read yet"],
    )
}

#[test]
fn removed_working_directory_and_directory_fds_stay_removed() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-rmdir-").tempdir()?;
    survives_two_restores("removed_dirs", &[path_arg(dir.path())?])
}

/// The same with no fd on the working directory: the restorer makes it alone.
#[test]
fn removed_working_directory_held_by_nothing_else() -> Result<()> {
    require_root!();
    let dir = tempfile::Builder::new().prefix("ckpt-rmdir-").tempdir()?;
    survives_two_restores("removed_dirs", &[path_arg(dir.path())?, "nofd"])
}

#[test]
fn a_pidfd_of_a_process_outside_is_refused() -> Result<()> {
    require_root!();
    refused("refused_kinds", &["pidfd-out"], &["pidfd", "not in the checkpoint"])
}

#[test]
fn a_proc_file_of_a_process_outside_is_refused() -> Result<()> {
    require_root!();
    refused("refused_kinds", &["proc-out"], &["/status", "not in the checkpoint"])
}
