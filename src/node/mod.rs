//! The tokio driver: wires the firewall side (`local`) ↔ the replica (`sync`, `table`) ↔
//! the tunnel (`tunnel`) for every peer, and serves the control socket and metrics.
//!
//! All protocol logic lives in the sans-IO cores; this module only moves bytes between
//! sockets and state machines, in batches (recvmmsg/sendmmsg, many packets per wakeup),
//! and feeds them time.

pub mod coalesce;
pub mod control;
pub mod driver;
pub mod privdrop;
pub mod ratelimit;
pub mod realtime;
pub mod repair;
pub mod status;

pub use driver::{Node, NodeHandle};

use crate::config::Config;

/// `pfsync-gw run`: run one node until SIGTERM/SIGINT; SIGHUP reloads the peers.
pub fn run_daemon(cfg: Config) -> i32 {
    // Before any thread exists (they inherit it) and before the privilege drop (which
    // gives up the right to raise it).
    let nice = match privdrop::set_nice(cfg.nice.value) {
        Ok(()) => format!("nice {}", cfg.nice.value),
        Err(e) if cfg.nice.explicit => {
            eprintln!(
                "error: {}: [node] nice = {}: {e}",
                cfg.path.display(),
                cfg.nice.value
            );
            return 1;
        }
        Err(e) => format!(
            "nice unchanged (default {} not permitted: {e})",
            cfg.nice.value
        ),
    };
    // After nice (the fallback when real-time scheduling is refused), before any thread.
    let sched = match privdrop::set_scheduler(cfg.scheduler) {
        Ok(()) => format!("scheduling: {}", cfg.scheduler),
        Err(e) if cfg.scheduler.explicit => {
            eprintln!(
                "error: {}: [node] scheduler / rt_priority ({}): {e}",
                cfg.path.display(),
                cfg.scheduler
            );
            return 1;
        }
        Err(e) => format!(
            "scheduling unchanged (default {} not permitted: {e})",
            cfg.scheduler
        ),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return 1;
        }
    };
    let run_as = cfg.privileges.run_as.clone();
    let keep_net_raw = cfg.local.mode == crate::config::LocalMode::Raw;
    rt.block_on(async move {
        tracing::info!("{nice}");
        tracing::info!("{sched}");
        let (node, handle) = match Node::bind(cfg).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        };
        // Every socket is open: give up root (see privdrop.rs and docs/DEPLOYMENT.md).
        if let Some(r) = &run_as {
            match privdrop::drop_privileges(r, keep_net_raw) {
                Ok(summary) => tracing::info!("privileges dropped: {summary}"),
                Err(e) => {
                    tracing::error!("cannot drop privileges to user `{}`: {e}", r.user.name);
                    return 1;
                }
            }
        }
        let reload = handle.clone();
        let stop = handle.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                stop.shutdown();
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => reload.reload(),
                    _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); stop.shutdown(); return; }
                    _ = int.recv() => { tracing::info!("SIGINT: shutting down"); stop.shutdown(); return; }
                }
            }
        });
        // A task, not the `block_on` future itself: the reactor wakes a task by queueing it
        // on this thread, while waking the `block_on` future writes the runtime's eventfd
        // and costs another `epoll_wait` (two syscalls per wakeup on the relay path).
        match tokio::spawn(node.run()).await {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                tracing::error!("{e}");
                1
            }
            Err(e) => {
                tracing::error!("event loop: {e}");
                1
            }
        }
    })
}
