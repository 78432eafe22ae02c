//! User and group names from the config (`[node] user`, `group`, `control_group`),
//! resolved to ids once, when the config is loaded.

use std::ffi::{CStr, CString};

/// A user or group: its name and numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedId {
    pub name: String,
    pub id: u32,
}

/// The account the daemon switches to after opening its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: NamedId,
    /// `[node] group`, else the user's primary group.
    pub group: NamedId,
}

/// `[node] user`, `group` and `control_group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Drop to this account after start-up (see `node::privdrop`).
    pub run_as: Option<RunAs>,
    /// The control socket is created 0660 and owned by this group (else 0600).
    pub control_group: Option<NamedId>,
}

fn cstring(name: &str) -> Result<CString, String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    CString::new(name).map_err(|_| format!("`{}` contains a NUL byte", name.escape_default()))
}

/// Runs a reentrant `getpw*_r`/`getgr*_r` call with a buffer that grows on ERANGE (up to
/// 1 MiB). `call` returns the call's error number and, if it found an entry, the fields
/// wanted from it (copied out before the buffer goes). `Err` is the error number.
fn with_buffer<T>(mut call: impl FnMut(&mut [u8]) -> (i32, Option<T>)) -> Result<Option<T>, i32> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (r, found) = call(&mut buf);
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return if r == 0 { Ok(found) } else { Err(r) };
    }
}

/// A name lookup with the error messages `check` shows ("no such user `x`").
fn by_name<T>(
    kind: &str,
    name: &str,
    mut call: impl FnMut(&CStr, &mut [u8]) -> (i32, Option<T>),
) -> Result<T, String> {
    let c = cstring(name)?;
    match with_buffer(|buf| call(&c, buf)) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(format!("no such {kind} `{name}`")),
        Err(r) => Err(format!(
            "cannot look up {kind} `{name}`: {}",
            std::io::Error::from_raw_os_error(r)
        )),
    }
}

/// Look a user up in the password database: (uid, primary gid).
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    by_name("user", name, |c, buf| {
        // SAFETY: getpwnam_r writes into `pwd` and `buf` (of the length we pass) only.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (r, (!out.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)))
    })
}

/// Look a group up in the group database.
pub fn lookup_group(name: &str) -> Result<u32, String> {
    by_name("group", name, |c, buf| {
        // SAFETY: getgrnam_r writes into `grp` and `buf` (of the length we pass) only.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (r, (!out.is_null()).then_some(grp.gr_gid))
    })
}

/// The name of `gid` for messages (its number if it has none).
pub fn group_name(gid: u32) -> String {
    let name = with_buffer(|buf| {
        // SAFETY: getgrgid_r writes into `grp` and `buf` (of the length we pass) only;
        // gr_name then points into `buf`, NUL-terminated, and is copied out before return.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out)
        };
        let name = (r == 0 && !out.is_null()).then(|| {
            unsafe { CStr::from_ptr(grp.gr_name) }
                .to_string_lossy()
                .into_owned()
        });
        (r, name)
    });
    name.ok().flatten().unwrap_or_else(|| gid.to_string())
}

/// The name of `uid` for messages (its number if it has none).
pub fn user_name(uid: u32) -> String {
    let name = with_buffer(|buf| {
        // SAFETY: as in group_name, with getpwuid_r and pw_name.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = unsafe {
            libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out)
        };
        let name = (r == 0 && !out.is_null()).then(|| {
            unsafe { CStr::from_ptr(pwd.pw_name) }
                .to_string_lossy()
                .into_owned()
        });
        (r, name)
    });
    name.ok().flatten().unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_nonsense_does_not() {
        assert_eq!(lookup_user("root"), Ok((0, 0)));
        assert_eq!(lookup_group("root"), Ok(0));
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        assert_eq!(user_name(0xfff0_0000), "4293918720");
        assert!(lookup_group("no-such-group-pfsync")
            .unwrap_err()
            .contains("no such group"));
        assert!(lookup_user("no-such-user-pfsync")
            .unwrap_err()
            .contains("no such user"));
        assert!(lookup_group("").is_err());
        assert!(lookup_user("a\0b").is_err());
    }
}
