//! Bad config or key files fail fast: the file, the field and the reason, exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/proc.rs"]
mod proc;

use proc::{bin, is_root, Dir};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// A fresh key pair: (private key file, public key).
fn keygen(dir: &Dir, name: &str) -> (PathBuf, String) {
    (dir.path(name), proc::keygen(&dir.0, name))
}

fn config(private: &Path, peer_pub: &str, extra: &str) -> String {
    format!(
        r#"[node]
name = "gw-a"
private_key_file = "{}"
listen = "127.0.0.1:0"

[local]
mode = "emulator"
dialect = "openbsd-v6"
{extra}
[[peer]]
name = "gw-b"
public_key = "{peer_pub}"
endpoint = "127.0.0.1:51901"
"#,
        private.display()
    )
}

fn check(dir: &Dir, text: &str) -> Output {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.path("c.toml");
    std::fs::write(&p, text).unwrap();
    // Whatever the umask: a group-writable config is refused (see below).
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&["check", "--config", p.to_str().unwrap()], None)
}

fn chown(p: &Path, user: &str) {
    let uid = pfsync_gw::config::account::lookup_user(user).unwrap().0;
    std::os::unix::fs::chown(p, Some(uid), None).unwrap();
}

fn assert_exit2(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn valid_config_checks_ok_and_shows_public_key() {
    let d = Dir::new("cfg-ok");
    let (a, a_pub) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let o = check(&d, &config(&a, &b_pub, ""));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(out.contains(&a_pub) && out.contains(&b_pub), "{out}");
}

#[test]
fn keygen_file_is_0600_and_pubkey_is_44_chars() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("cfg-kg");
    let (p, public) = keygen(&d, "k");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(public.len(), 44);
    let o = run(&["genpsk"], None);
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim().len(), 44);
}

#[test]
fn pubkey_rejects_garbage_with_exit_2() {
    let o = run(&["pubkey"], Some("not a key\n"));
    assert_exit2(&o, &["standard input"]);
}

#[test]
fn missing_key_file() {
    let d = Dir::new("cfg-missing");
    let (_, b_pub) = keygen(&d, "b.key");
    let o = check(&d, &config(&d.path("nope.key"), &b_pub, ""));
    assert_exit2(&o, &["c.toml", "node.private_key_file", "nope.key"]);
}

#[test]
fn wrong_peer_key() {
    let d = Dir::new("cfg-wrongkey");
    let (a, _) = keygen(&d, "a.key");
    let o = check(&d, &config(&a, "AAAA", ""));
    assert_exit2(&o, &["c.toml", "peer[0].public_key", "44 characters"]);
}

#[test]
fn world_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("cfg-perm");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = check(&d, &config(&a, &b_pub, ""));
    assert_exit2(&o, &["node.private_key_file", "chmod 600"]);
}

#[test]
fn bad_toml() {
    let d = Dir::new("cfg-badtoml");
    let o = check(&d, "[node\nname = ");
    assert_exit2(&o, &["c.toml", "invalid TOML", "line"]);
}

#[test]
fn unknown_field() {
    let d = Dir::new("cfg-unknown");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let o = check(&d, &config(&a, &b_pub, "colour = \"blue\"\n"));
    assert_exit2(&o, &["c.toml", "unknown field", "colour"]);
}

#[test]
fn a_state_limit_beyond_what_the_table_can_address_is_refused() {
    let d = Dir::new("cfg-limits");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let text = format!("{}\n[limits]\nstates = 100000000\n", config(&a, &b_pub, ""));
    assert_exit2(
        &check(&d, &text),
        &["limits.states", "100000000", "16777216"],
    );
}

/// A valid config in a fresh directory, and the same with `[table] key = value` added.
fn one_setting(dir: &str, table: &str, key: &str) -> (Dir, impl Fn(&str) -> String) {
    let d = Dir::new(dir);
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let base = config(&a, &b_pub, "");
    let (table, key) = (table.to_string(), key.to_string());
    (d, move |v: &str| {
        format!("{base}\n[{table}]\n{key} = {v}\n")
    })
}

/// Found by review: `check` passed and `run` panicked ("overflow when adding duration to
/// instant") on a `churn_for` beyond what an `Instant` can hold.
#[test]
fn a_churn_duration_beyond_what_a_clock_holds_is_refused_not_a_panic() {
    let (d, with) = one_setting("cfg-churn", "emulator", "churn_for");
    let huge = i64::MAX.to_string();
    assert_exit2(&check(&d, &with(&huge)), &["emulator.churn_for", &huge]);
    let p = d.path("run.toml");
    std::fs::write(&p, with(&huge)).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = run(&["run", "--config", p.to_str().unwrap()], None);
    assert_exit2(&o, &["emulator.churn_for"]);
    assert!(check(&d, &with("31536000")).status.success());
}

/// Found by review: a `repair_rate` near u64's top wrapped the answer budget's refill
/// negative (credit stopped refilling); it is refused with the field and the range.
#[test]
fn a_repair_rate_beyond_any_link_is_refused() {
    let (d, with) = one_setting("cfg-repair", "limits", "repair_rate");
    let huge = i64::MAX.to_string();
    assert_exit2(&check(&d, &with(&huge)), &["limits.repair_rate", &huge]);
    assert!(check(&d, &with("1000000000")).status.success());
}

/// Found by review: `check` passed a `rate` of 2e9 and `run` then spun for ever in the
/// emulator's creation loop (a second over the rate is 0 ns), deaf to SIGTERM.
#[test]
fn an_emulator_rate_beyond_a_million_is_refused_not_a_hang() {
    let (d, with) = one_setting("cfg-rate", "emulator", "rate");
    assert_exit2(
        &check(&d, &with("2000000000")),
        &["emulator.rate", "2000000000", "0..=1000000"],
    );
    assert!(check(&d, &with("1000000")).status.success());
    let o = run(
        &["emulate", "--interface", "lo", "--rate", "2000000000"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn unknown_dialect_and_bad_endpoint() {
    let d = Dir::new("cfg-dialect");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let o = check(&d, &config(&a, &b_pub, "").replace("openbsd-v6", "solaris"));
    assert_exit2(&o, &["local.dialect", "solaris", "openbsd-v6"]);
    let o = check(
        &d,
        &config(&a, &b_pub, "").replace("127.0.0.1:51901", "nowhere"),
    );
    assert_exit2(&o, &["peer[0].endpoint", "port"]);
}

#[test]
fn run_with_bad_config_exits_2_without_starting() {
    let d = Dir::new("cfg-run");
    let p = d.path("c.toml");
    std::fs::write(&p, "garbage = [").unwrap();
    let o = run(&["run", "--config", p.to_str().unwrap()], None);
    assert_exit2(&o, &["c.toml"]);
}

#[test]
fn symlinked_key_file_is_refused() {
    let d = Dir::new("cfg-symlink");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let link = d.path("link.key");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let o = check(&d, &config(&link, &b_pub, ""));
    assert_exit2(
        &o,
        &[
            "c.toml",
            "node.private_key_file",
            "link.key",
            "symbolic link",
        ],
    );
}

#[test]
fn key_file_that_is_not_a_regular_file_is_refused() {
    // A FIFO would block start-up forever if it were opened blocking and read.
    let d = Dir::new("cfg-fifo");
    let (_, b_pub) = keygen(&d, "b.key");
    let fifo = d.path("fifo.key");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = check(&d, &config(&fifo, &b_pub, ""));
    assert_exit2(&o, &["node.private_key_file", "not a regular file"]);
}

#[test]
fn key_file_owned_by_someone_else_is_refused_unless_it_is_the_service_user() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let d = Dir::new("cfg-owner");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    chown(&a, "nobody");
    let o = check(&d, &config(&a, &b_pub, ""));
    assert_exit2(&o, &["node.private_key_file", "owned by nobody", "root"]);
    // The account the daemon drops to may own its keys (so that SIGHUP can re-read them).
    let text = config(&a, &b_pub, "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nuser = \"nobody\"",
    );
    let o = check(&d, &text);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("runs as           user nobody (uid 65534)"),
        "{out}"
    );
}

#[test]
fn unknown_user_and_group_are_refused() {
    let d = Dir::new("cfg-user");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let with = |line: &str| {
        config(&a, &b_pub, "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\n{line}"),
        )
    };
    let o = check(&d, &with("user = \"no-such-user-pfsync\""));
    assert_exit2(&o, &["c.toml", "node.user", "no such user"]);
    let o = check(
        &d,
        &with("user = \"root\"\ngroup = \"no-such-group-pfsync\""),
    );
    assert_exit2(&o, &["node.group", "no such group"]);
    let o = check(&d, &with("control_group = \"no-such-group-pfsync\""));
    assert_exit2(&o, &["node.control_group", "no such group"]);
    let o = check(&d, &with("group = \"root\""));
    assert_exit2(&o, &["node.group", "node.user"]);
}

#[test]
fn config_writable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("cfg-cfgmode");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let p = d.path("c.toml");
    std::fs::write(&p, config(&a, &b_pub, "")).unwrap();
    for mode in [0o666, 0o620, 0o602] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        for cmd in ["check", "run"] {
            let o = run(&[cmd, "--config", p.to_str().unwrap()], None);
            assert_exit2(&o, &["c.toml", "writable by group or others", "chmod go-w"]);
        }
    }
    // Readable by all is fine: the config holds no secrets (keys are separate files).
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["check", "--config", p.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    if is_root() {
        chown(&p, "nobody");
        let o = run(&["check", "--config", p.to_str().unwrap()], None);
        assert_exit2(&o, &["c.toml", "owned by nobody"]);
    }
}

#[test]
fn public_key_next_is_checked_and_shown() {
    let d = Dir::new("cfg-next");
    let (a, a_pub) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let (_, b_next) = keygen(&d, "b2.key");
    let ok = config(&a, &b_pub, "") + &format!("public_key_next = \"{b_next}\"\n");
    let o = check(&d, &ok);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("(next {b_next})")));
    let bad = config(&a, &b_pub, "") + "public_key_next = \"AAAA\"\n";
    assert_exit2(
        &check(&d, &bad),
        &["c.toml", "peer[0].public_key_next", "44 characters"],
    );
    let same = config(&a, &b_pub, "") + &format!("public_key_next = \"{b_pub}\"\n");
    assert_exit2(&check(&d, &same), &["peer[0].public_key_next", "duplicate"]);
    let zero = config(&a, &b_pub, "")
        + "public_key_next = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
    assert_exit2(&check(&d, &zero), &["peer[0].public_key_next", "low-order"]);
    let own = config(&a, &b_pub, "") + &format!("public_key_next = \"{a_pub}\"\n");
    assert_exit2(
        &check(&d, &own),
        &["peer[0].public_key_next", "own public key"],
    );
}

#[test]
fn missing_field_names_table_and_field() {
    let d = Dir::new("cfg-missingfield");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let text = config(&a, &b_pub, "").replace("dialect = \"openbsd-v6\"\n", "");
    assert!(!text.contains("dialect"), "fixture changed: {text}");
    let o = check(&d, &text);
    assert_exit2(&o, &["c.toml", "[local]: missing field `dialect`"]);
    let text = config(&a, &b_pub, "").replace("name = \"gw-b\"\n", "");
    let o = check(&d, &text);
    assert_exit2(&o, &["c.toml", "[peer]: missing field `name`"]);
    let text = config(&a, &b_pub, "").replace(
        "[local]\nmode = \"emulator\"\ndialect = \"openbsd-v6\"\n",
        "",
    );
    let o = check(&d, &text);
    assert_exit2(&o, &["c.toml", "missing table `[local]`"]);
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    let d = Dir::new("cfg-nocolour");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let p = d.path("c.toml");
    std::fs::write(&p, config(&a, &b_pub, "")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pfsync-gw"))
        .args(["run", "--config", p.to_str().unwrap()])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log as it comes and stop the daemon once it has started (a fixed wait
    // fails on a loaded machine).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("pfsync-gw started") {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait_with_output().unwrap();
    let err = reader.join().unwrap();
    assert!(err.contains("pfsync-gw started"), "no log line: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in a piped log: {err:?}"
    );
}

#[test]
fn a_nice_value_outside_the_kernels_range_is_refused() {
    let d = Dir::new("cfg-nice");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let text = config(&a, &b_pub, "").replace("[node]\n", "[node]\nnice = -21\n");
    assert_exit2(&check(&d, &text), &["node.nice", "-21", "-20..=19"]);
    let ok = config(&a, &b_pub, "").replace("[node]\n", "[node]\nnice = 19\n");
    let o = check(&d, &ok);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("nice              19"));
}

#[test]
fn an_mtu_below_what_the_sync_layer_needs_is_refused_not_a_panic() {
    let d = Dir::new("cfg-mtu");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let with =
        |v: &str| config(&a, &b_pub, "").replace("[node]\n", &format!("[node]\nmtu = {v}\n"));
    // 1231 = 1200 bytes of sync messages + 32 of tunnel framing, less one: the replica
    // would refuse it at start-up.
    for bad in ["576", "1231", "65001"] {
        assert_exit2(&check(&d, &with(bad)), &["node.mtu", bad, "1232..=65000"]);
    }
    let o = check(&d, &with("1232"));
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("tunnel mtu        1232 bytes"));
}

#[test]
fn a_bad_scheduler_or_real_time_priority_is_refused() {
    let d = Dir::new("cfg-sched");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let with =
        |lines: &str| config(&a, &b_pub, "").replace("[node]\n", &format!("[node]\n{lines}\n"));
    assert_exit2(
        &check(&d, &with("scheduler = \"deadline\"")),
        &["node.scheduler", "deadline", "fifo, rr or other"],
    );
    for p in ["0", "100"] {
        assert_exit2(
            &check(&d, &with(&format!("rt_priority = {p}"))),
            &["node.rt_priority", p, "1..=99"],
        );
    }
    assert_exit2(
        &check(&d, &with("scheduler = \"other\"\nrt_priority = 5")),
        &["node.rt_priority", "only with scheduler"],
    );
    assert_check_says(
        &d,
        [
            (
                config(&a, &b_pub, ""),
                "SCHED_FIFO priority 1 (default, if permitted)",
            ),
            (
                with("scheduler = \"rr\"\nrt_priority = 20"),
                "SCHED_RR priority 20\n",
            ),
            (
                with("scheduler = \"other\""),
                "scheduler         SCHED_OTHER\n",
            ),
        ],
    );
}

/// `check` accepts each config and prints what it says about it.
fn assert_check_says<const N: usize>(d: &Dir, cases: [(String, &str); N]) {
    for (text, says) in cases {
        let o = check(d, &text);
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(says), "{says}: {out}");
    }
}

#[test]
fn rx_coalescing_beyond_a_millisecond_is_refused_and_zero_turns_it_off() {
    let d = Dir::new("cfg-coalesce");
    let (a, _) = keygen(&d, "a.key");
    let (_, b_pub) = keygen(&d, "b.key");
    let with = |v: &str| {
        config(&a, &b_pub, "").replace("[node]\n", &format!("[node]\nrx_coalesce_us = {v}\n"))
    };
    assert_exit2(
        &check(&d, &with("1001")),
        &["node.rx_coalesce_us", "1001", "0..=1000"],
    );
    assert_exit2(&check(&d, &with("-5")), &["node.rx_coalesce_us", "-5"]);
    assert_check_says(
        &d,
        [
            (with("0"), "rx coalescing     off"),
            (with("250"), "rx coalescing     250 µs"),
            (config(&a, &b_pub, ""), "rx coalescing     100 µs"),
        ],
    );
}

/// A raw-mode config on `lo` with fresh keys in `d`, and a function adding `[local] key = v`.
fn raw_config_with(d: &Dir, key: &'static str) -> (String, impl Fn(&str) -> String) {
    let (a, _) = keygen(d, "a.key");
    let (_, b_pub) = keygen(d, "b.key");
    let raw = config(&a, &b_pub, "").replace(
        "mode = \"emulator\"",
        "mode = \"raw\"\ninterface = \"lo\"\nfirewalls = [\"192.0.2.2\"]",
    );
    let base = raw.clone();
    (base, move |v: &str| {
        raw.replace("[local]\n", &format!("[local]\n{key} = {v}\n"))
    })
}

#[test]
fn a_shed_target_beyond_a_second_is_refused_and_zero_turns_kernel_shedding_off() {
    let d = Dir::new("cfg-shed");
    // The capture socket's filter exists in raw mode.
    let (raw, with) = raw_config_with(&d, "shed_target_ms");
    assert_exit2(
        &check(&d, &with("1001")),
        &["local.shed_target_ms", "1001", "0..=1000"],
    );
    assert_exit2(&check(&d, &with("-1")), &["local.shed_target_ms", "-1"]);
    for (v, says) in [
        ("0", "kernel shedding off"),
        ("5", "above 5 ms capture delay"),
        ("", "above 20 ms capture delay"),
    ] {
        let text = if v.is_empty() { raw.clone() } else { with(v) };
        let o = check(&d, &text);
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(says), "{v}: {out}");
    }
}

#[test]
fn an_unknown_inject_path_is_refused_and_check_names_the_path() {
    let d = Dir::new("cfg-inject");
    let (raw, with) = raw_config_with(&d, "inject_path");
    assert_exit2(
        &check(&d, &with("\"bpf\"")),
        &["local.inject_path", "bpf", "\"link\" or \"ip\""],
    );
    assert_check_says(
        &d,
        [
            (
                raw.clone(),
                "inject to 224.0.0.240 ttl 255 as link-layer frames if the interface is Ethernet",
            ),
            (with("\"link\""), "as link-layer frames"),
            (with("\"ip\""), "ttl 255 by the raw socket"),
            // A unicast destination always goes by the raw socket.
            (
                raw.replace("[local]\n", "[local]\ninject_to = \"127.0.0.2\"\n"),
                "inject to 127.0.0.2 ttl 255 by the raw socket",
            ),
        ],
    );
}

#[test]
fn an_unknown_capture_path_is_refused_and_check_names_the_path() {
    let d = Dir::new("cfg-capture");
    let (raw, with) = raw_config_with(&d, "capture_path");
    assert_exit2(
        &check(&d, &with("\"pcap\"")),
        &["local.capture_path", "pcap", "\"link\" or \"ip\""],
    );
    assert_check_says(
        &d,
        [
        (
            raw.clone(),
            "capture multicast 224.0.0.240 + unicast, from link-layer frames if the interface is Ethernet",
        ),
        (with("\"link\""), "from link-layer frames"),
        (with("\"ip\""), "capture multicast 224.0.0.240 + unicast by the raw socket"),
        // Without the group there is nothing for the link capture to read.
        (
            with("\"link\"").replace("[local]\n", "[local]\ncapture_multicast = false\n"),
            "capture unicast only",
        ),
    ],
    );
}
