//! Least privilege: after the daemon has opened its sockets (tunnel UDP, raw pfsync,
//! control socket, metrics), it switches to `[node] user` and keeps at most CAP_NET_RAW
//! (Linux, raw mode only; the emulator mode keeps no capability at all).
//!
//! Hand-written on libc rather than the `caps` crate: the whole job is five system calls
//! (prctl, setgroups, setresgid, setresuid, capset) in a fixed order, and the order is the
//! part that matters.
//!
//! Order (Linux): refuse if other threads exist (capabilities are per thread); drop every
//! capability but the kept one from the bounding set (so nothing can regain them); keep
//! capabilities across the uid change (PR_SET_KEEPCAPS); setgroups → setresgid → setresuid;
//! set effective = permitted = the kept set, inheritable and ambient empty; no new
//! privileges; then check that root cannot be regained.
//!
//! Already running as the target user (systemd `User=` with `AmbientCapabilities=`), only
//! the capability sets are reduced.
//!
//! `set_nice` and `set_scheduler` are here too: raising the daemon's priority is the other
//! thing only the privileged start can do.

use crate::config::{RunAs, SchedPolicy, Scheduler};

/// CAP_NET_RAW (linux/capability.h).
pub const CAP_NET_RAW: u32 = 13;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The last OS error, with `hint` when it is `errno` (the refusal the operator can fix).
fn last_err_with_hint(errno: i32, hint: &str) -> String {
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(errno) {
        format!("{e} ({hint})")
    } else {
        e.to_string()
    }
}

/// The calling thread's scheduling policy (without `SCHED_RESET_ON_FORK`) and real-time
/// priority.
#[cfg(target_os = "linux")]
pub fn current_scheduler() -> (i32, i32) {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain getters on the calling thread; `param` outlives the call.
    let policy = unsafe { libc::sched_getscheduler(0) } & !libc::SCHED_RESET_ON_FORK;
    if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
        param.sched_priority = -1;
    }
    (policy, param.sched_priority)
}

/// The calling thread's policy in the config's terms (a policy other than FIFO or RR counts
/// as `SCHED_OTHER`), for what is shown and decided from it.
#[cfg(target_os = "linux")]
pub fn current_policy() -> Scheduler {
    let (policy, priority) = current_scheduler();
    let policy = match policy {
        libc::SCHED_FIFO => SchedPolicy::Fifo,
        libc::SCHED_RR => SchedPolicy::Rr,
        _ => SchedPolicy::Other,
    };
    Scheduler {
        policy,
        priority: priority.clamp(0, 99) as u8,
        explicit: false,
    }
}

/// Set the scheduling priority (nice value) of the calling thread and of every thread it
/// creates afterwards (Linux: per thread; the BSDs: the whole process).
pub fn set_nice(nice: i32) -> Result<(), String> {
    // SAFETY: plain syscall on integers; `who` 0 is the caller.
    #[allow(clippy::unnecessary_cast)]
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, nice) };
    if r != 0 {
        return Err(last_err_with_hint(
            libc::EACCES,
            "raising priority needs root or CAP_SYS_NICE",
        ));
    }
    Ok(())
}

/// Set the scheduling policy of the calling thread. Threads and processes it creates later
/// start under `SCHED_OTHER` at nice 0 (`SCHED_RESET_ON_FORK`: the kernel resets both), so
/// nothing the daemon spawns competes with it, and a compromised daemon cannot hand its
/// priority on. Already running as asked (systemd's `CPUSchedulingPolicy=`), nothing is
/// changed: a unit with `RestrictRealtime=` refuses the call even then.
pub fn set_scheduler(sched: Scheduler) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        let policy = match sched.policy {
            SchedPolicy::Fifo => libc::SCHED_FIFO,
            SchedPolicy::Rr => libc::SCHED_RR,
            SchedPolicy::Other => libc::SCHED_OTHER,
        };
        let priority = if sched.policy == SchedPolicy::Other {
            0
        } else {
            sched.priority as i32
        };
        if current_scheduler() == (policy, priority) {
            return Ok(());
        }
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: `param` outlives the call; pid 0 is the calling thread.
        let r = unsafe { libc::sched_setscheduler(0, policy | libc::SCHED_RESET_ON_FORK, &param) };
        if r != 0 {
            return Err(last_err_with_hint(libc::EPERM, "real-time scheduling needs root or CAP_SYS_NICE, or systemd's CPUSchedulingPolicy= with the same policy and priority, without RestrictRealtime="));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        if sched.policy == SchedPolicy::Other {
            return Ok(());
        }
        Err("real-time scheduling is only set on Linux here".into())
    }
}

/// Switch to `run_as`, keeping CAP_NET_RAW if `keep_net_raw` (Linux). Returns a one-line
/// summary for the log.
pub fn drop_privileges(run_as: &RunAs, keep_net_raw: bool) -> Result<String, String> {
    let (uid, gid) = (run_as.user.id, run_as.group.id);
    #[cfg(target_os = "linux")]
    {
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
        if threads > 1 {
            return Err(format!(
                "{threads} threads running; capabilities are per thread, so the drop must happen while there is one"
            ));
        }
    }
    // SAFETY: plain getters.
    let euid = unsafe { libc::geteuid() };
    let switch = euid != uid;
    if switch && euid != 0 {
        return Err(format!(
            "running as uid {euid}: only root can switch to user `{}` (uid {uid}); start as root or as that user",
            run_as.user.name
        ));
    }

    #[cfg(target_os = "linux")]
    linux::before_switch(keep_net_raw)?;

    if switch {
        let groups = [gid as libc::gid_t];
        // SAFETY: setgroups reads one gid from a live array; the set*id calls take plain
        // integers (glibc applies them to every thread).
        unsafe {
            if libc::setgroups(1, groups.as_ptr()) != 0 {
                return Err(os_err("setgroups"));
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(os_err("setresgid"));
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(os_err("setresuid"));
            }
        }
    }

    #[cfg(target_os = "linux")]
    let caps = linux::after_switch(keep_net_raw)?;
    #[cfg(not(target_os = "linux"))]
    let caps = "none (not Linux)";

    // Check: the ids are what we asked for, and root cannot be regained.
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three integers we own.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 || [r, e, s] != [uid; 3] {
        return Err(format!("uids are {r}/{e}/{s} after the switch, not {uid}"));
    }
    // SAFETY: setuid(0) must fail now; if it succeeds we refuse to run.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err("setuid(0) still succeeds after dropping privileges".into());
    }
    Ok(format!(
        "running as user {} (uid {uid}), group {} (gid {gid}), capabilities: {caps}",
        run_as.user.name, run_as.group.name
    ))
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{os_err, CAP_NET_RAW};

    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    fn prctl(op: libc::c_int, arg: libc::c_ulong) -> libc::c_int {
        // SAFETY: the prctl options used here take integer arguments only.
        unsafe {
            libc::prctl(
                op,
                arg,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        }
    }

    pub(super) fn before_switch(keep_net_raw: bool) -> Result<(), String> {
        // Bounding set: needs CAP_SETPCAP; without it (already unprivileged, or a container
        // that removed it) the capset below still leaves only the kept capability.
        for cap in 0..64 {
            if keep_net_raw && cap == CAP_NET_RAW {
                continue;
            }
            if prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) != 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                if e != Some(libc::EPERM) {
                    return Err(os_err("prctl(PR_CAPBSET_DROP)"));
                }
            }
        }
        if prctl(libc::PR_SET_KEEPCAPS, 1) != 0 {
            return Err(os_err("prctl(PR_SET_KEEPCAPS)"));
        }
        Ok(())
    }

    pub(super) fn after_switch(keep_net_raw: bool) -> Result<&'static str, String> {
        let keep = if keep_net_raw { 1u32 << CAP_NET_RAW } else { 0 };
        let mut hdr = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep,
                permitted: keep,
                inheritable: 0,
            },
            CapData::default(),
        ];
        // SAFETY: capset reads a version-3 header and two data structs we own.
        if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
            return Err(os_err("capset"));
        }
        // Ambient capabilities (kernel ≥ 4.3): EINVAL on older kernels means none exist.
        // SAFETY: integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(os_err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
        }
        if prctl(libc::PR_SET_KEEPCAPS, 0) != 0 {
            return Err(os_err("prctl(PR_SET_KEEPCAPS, 0)"));
        }
        if prctl(libc::PR_SET_NO_NEW_PRIVS, 1) != 0 {
            return Err(os_err("prctl(PR_SET_NO_NEW_PRIVS)"));
        }
        Ok(if keep_net_raw { "cap_net_raw" } else { "none" })
    }
}
