//! Tears down a scratch directory that a daemon or container tool used, whatever state it was left in.
//!
//! Written as a bash function because the same code must also run in the dockerd supervisor after
//! the test process is gone (see `dockerd.rs`). In order it:
//! 1. kills every process in the cgroup `$TD_CGROUP` (container processes: they do not mention the
//!    directory on their command line) and every process whose command line names `$TD_DIR/`
//!    (containerd, containerd shims, conmon), until none is left;
//! 2. removes that cgroup in every hierarchy (v1 and v2), deepest first;
//! 3. unmounts everything mounted under the directory, deepest first (dockerd bind-mounts its data
//!    root onto itself and leaves `exec-root/netns/default` mounted even after a clean stop);
//! 4. `rm -rf`s the directory (vfs layers are root-owned copies; we run as root).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::{run_with_timeout, streams};

/// `teardown`: uses `$TD_DIR` (absolute, required) and `$TD_CGROUP` (may be empty).
/// Prints what it could not clean to stderr and returns non-zero in that case.
pub const TEARDOWN_SH: &str = r#"
# SIGKILLs every process in cgroup $TD_CGROUP (any hierarchy, any depth below it up to 2);
# prints the PIDs it signalled.
kill_cgroup() {
  local cg=${TD_CGROUP:-} f p
  [ -n "$cg" ] || return 0
  case "$cg" in *[!A-Za-z0-9_-]*) echo "teardown: refusing cgroup '$cg'" >&2; return 1 ;; esac
  for f in /sys/fs/cgroup/*/"$cg"/cgroup.procs /sys/fs/cgroup/*/"$cg"/*/cgroup.procs \
           /sys/fs/cgroup/"$cg"/cgroup.procs /sys/fs/cgroup/"$cg"/*/cgroup.procs; do
    [ -r "$f" ] || continue
    while read -r p; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null && echo "$p"; done < "$f"
  done
}

teardown() {
  local dir=$TD_DIR cg=${TD_CGROUP:-} i p d m left
  case "$dir" in /?*/?*) ;; *) echo "teardown: refusing dir '$dir'" >&2; return 1 ;; esac
  case "$cg" in *[!A-Za-z0-9_-]*) echo "teardown: refusing cgroup '$cg'" >&2; return 1 ;; esac
  for i in $(seq 1 50); do
    left=$(kill_cgroup | tr '\n' ' ')
    for p in $(pgrep -f -- "$dir/"); do
      [ "$p" != "$$" ] && kill -KILL "$p" 2>/dev/null && left="$left $p"
    done
    [ -z "$left" ] && break
    sleep 0.1
  done
  [ -n "$left" ] && echo "teardown: processes still alive:$left" >&2
  if [ -n "$cg" ]; then
    for i in $(seq 1 50); do
      left=""
      for d in /sys/fs/cgroup/*/"$cg"/*/ /sys/fs/cgroup/"$cg"/*/ /sys/fs/cgroup/*/"$cg"/ /sys/fs/cgroup/"$cg"/; do
        [ -d "$d" ] && { rmdir "$d" 2>/dev/null || left="$left $d"; }
      done
      [ -z "$left" ] && break
      sleep 0.1
    done
    [ -n "$left" ] && echo "teardown: cgroups still present:$left" >&2
  fi
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || echo "teardown: cannot unmount $m" >&2; done
  for i in 1 2 3 4 5; do
    rm -rf -- "$dir" 2>/dev/null
    [ -e "$dir" ] || return 0
    sleep 0.2
  done
  rm -rf -- "$dir"
  echo "teardown: $dir still exists" >&2
  return 1
}
"#;

/// Runs [`TEARDOWN_SH`] on `dir` (and `cgroup`, a cgroup name relative to each hierarchy root).
/// Returns the script's complaints as `Err` instead of panicking: it is called from `Drop`.
pub fn teardown(dir: &Path, cgroup: Option<&str>) -> Result<(), String> {
    let script = format!("{TEARDOWN_SH}\nteardown");
    let out = run_with_timeout(
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("TD_DIR", dir)
            .env("TD_CGROUP", cgroup.unwrap_or("")),
        Duration::from_secs(60),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "teardown of {} failed ({})\n{}",
            dir.display(),
            out.status,
            streams(&out.stdout, &out.stderr)
        ))
    }
}
