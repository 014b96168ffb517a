//! Starting a command and waiting for it: `posix_spawn` with an
//! environment prepared once, its exit watched through a pidfd.
//!
//! `std::process::Command` (and tokio's, over it) copies the whole
//! environment into a map and back into C strings at every spawn once any
//! variable is set, and every attempt sets four (`HERD_TASK_ID`, …): with
//! 44 variables, some 70 thousand instructions and 130 allocations a
//! command (callgrind). Here the inherited environment is encoded once,
//! when the runner is built (herd never changes its own), and each spawn
//! adds its four: herd's own CPU over 10,000 `/bin/true` went from
//! 1.64–1.84 s to 1.33–1.47 s (four runs each, taking turns).
//!
//! What the child gets is what `Command` gives: stdin, stdout and stderr as
//! set, every other descriptor of herd closed (all are opened close-on-exec),
//! an empty signal mask, `SIGPIPE` back to its default, and its own process
//! group (`process_group(0)`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use rustix::process::WaitOptions;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The environment every command starts with, encoded once.
#[derive(Debug)]
pub(crate) struct Environment {
    /// `KEY=value`, herd's own environment with the runner's additions.
    base: Vec<CString>,
    /// The runner's `PATH`, when it sets one: programs are looked up there.
    path: Option<OsString>,
}

impl Environment {
    /// herd's environment, with `extra` set over it (later wins), without
    /// the variables each spawn sets (`per_spawn`).
    pub(crate) fn new(extra: &[(OsString, OsString)], per_spawn: &[&str]) -> Environment {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (key, value) in extra {
            vars.retain(|(k, _)| k != key);
            vars.push((key.clone(), value.clone()));
        }
        vars.retain(|(k, _)| !per_spawn.iter().any(|p| OsStr::new(p) == k));
        let path = extra
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let base = vars
            .iter()
            .filter_map(|(k, v)| pair(k.as_bytes(), v.as_bytes()).ok())
            .collect();
        Environment { base, path }
    }
}

/// `KEY=value` as a C string.
fn pair(key: &[u8], value: &[u8]) -> io::Result<CString> {
    let mut bytes = Vec::with_capacity(key.len() + 1 + value.len() + 1);
    bytes.extend_from_slice(key);
    bytes.push(b'=');
    bytes.extend_from_slice(value);
    CString::new(bytes).map_err(|_| nul_error())
}

fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "nul byte found in provided data",
    )
}

/// A started command: its pid, the read ends of its stdout and stderr,
/// and a way to wait for its exit. Dropped before its exit was seen, it is
/// reaped in the background (the caller kills it first, if it must die).
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    /// Taken by [`Child::take_output`].
    output: Option<(pipe::Receiver, pipe::Receiver)>,
    exit: Exit,
}

#[derive(Debug)]
enum Exit {
    /// Readable when the child has exited (Linux 5.3 on).
    Watch(AsyncFd<OwnedFd>),
    /// No pidfd: a blocking `waitpid` on tokio's blocking pool.
    Thread(tokio::task::JoinHandle<io::Result<ExitStatus>>),
    Done(ExitStatus),
}

/// Spawns `argv[0]` (looked up in `PATH`) with `argv` as its arguments and
/// `env`'s variables and `vars`, stdin from `stdin`, stdout and stderr
/// piped, in a new process group.
pub(crate) fn spawn(
    argv: &[String],
    env: &Environment,
    vars: &[(&str, &str)],
    stdin: BorrowedFd<'_>,
) -> io::Result<Child> {
    spawn_watched(argv, env, vars, stdin, true)
}

/// [`spawn`]; `pidfd`: watch the exit through a pidfd if the kernel has
/// them (false: the fallback, for its tests).
fn spawn_watched(
    argv: &[String],
    env: &Environment,
    vars: &[(&str, &str)],
    stdin: BorrowedFd<'_>,
    pidfd: bool,
) -> io::Result<Child> {
    let args = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| nul_error()))
        .collect::<io::Result<Vec<_>>>()?;
    let Some(first) = args.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let program = match &env.path {
        Some(path) if !first.as_bytes().contains(&b'/') => {
            look_up(OsStr::from_bytes(first.as_bytes()), path)?
        }
        _ => first.clone(),
    };
    let mut envp: Vec<CString> = Vec::with_capacity(vars.len());
    for (key, value) in vars {
        envp.push(pair(key.as_bytes(), value.as_bytes())?);
    }
    let envp: Vec<&std::ffi::CStr> = env
        .base
        .iter()
        .chain(&envp)
        .map(CString::as_c_str)
        .collect();

    let (out_read, out_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(stdin.as_raw_fd(), 0)?;
    actions.add_dup2(out_write.as_raw_fd(), 1)?;
    actions.add_dup2(err_write.as_raw_fd(), 2)?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_pgroup(Pid::from_raw(0))?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut sigpipe = SigSet::empty();
    sigpipe.add(Signal::SIGPIPE);
    attr.set_sigdefault(&sigpipe)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let pid = posix_spawnp(&program, &actions, &attr, &args, &envp)?;
    drop((out_write, err_write));

    let watch = match pidfd {
        true => rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid.as_raw()).expect("a spawned pid is positive"),
            rustix::process::PidfdFlags::empty(),
        ),
        false => Err(rustix::io::Errno::NOSYS),
    };
    let exit = match watch.map_err(io::Error::from).and_then(watch_readable) {
        Ok(fd) => Exit::Watch(fd),
        Err(_) => Exit::Thread(tokio::task::spawn_blocking(move || wait_blocking(pid))),
    };
    let mut child = Child {
        pid,
        output: None,
        exit,
    };
    match (
        pipe::Receiver::from_owned_fd(out_read),
        pipe::Receiver::from_owned_fd(err_read),
    ) {
        (Ok(out), Ok(err)) => {
            child.output = Some((out, err));
            Ok(child)
        }
        (Err(error), _) | (_, Err(error)) => {
            // Started, but its output cannot be read: it must not run on
            // (dropped, it is reaped when it exits).
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
            Err(error)
        }
    }
}

/// `fd` registered with the runtime, for readiness to read.
// `AsyncFd::with_interest` is deprecated for descriptors that may close or
// change under the `AsyncFd`; an `OwnedFd` it owns cannot, and the
// replacement is `unsafe`, which herd forbids.
#[allow(deprecated)]
fn watch_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// The first executable `program` in the directories of `path`.
fn look_up(program: &OsStr, path: &OsStr) -> io::Result<CString> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .and_then(|found| CString::new(found.into_os_string().into_vec()).ok())
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn wait_blocking(pid: Pid) -> io::Result<ExitStatus> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).expect("a spawned pid is positive");
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_raw(status.as_raw())),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Child {
    /// The child's pid, which is also its process group's id.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// The read ends of stdout and stderr (once).
    pub(crate) fn take_output(&mut self) -> Option<(pipe::Receiver, pipe::Receiver)> {
        self.output.take()
    }

    /// Waits for the child to exit and reaps it. Cancel-safe: a wait that
    /// is dropped loses nothing, and the next one goes on.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match &mut self.exit {
                Exit::Done(status) => return Ok(*status),
                Exit::Thread(handle) => {
                    let status = handle.await.map_err(io::Error::other)??;
                    self.exit = Exit::Done(status);
                }
                Exit::Watch(fd) => {
                    let mut ready = fd.readable().await?;
                    match try_reap(self.pid)? {
                        Some(status) => self.exit = Exit::Done(status),
                        None => ready.clear_ready(),
                    }
                }
            }
        }
    }
}

/// The child's exit status if it has exited (and is now reaped).
fn try_reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).expect("a spawned pid is positive");
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(found) => return Ok(found.map(|(_, s)| ExitStatus::from_raw(s.as_raw()))),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let pid = self.pid;
        match std::mem::replace(&mut self.exit, Exit::Done(ExitStatus::from_raw(0))) {
            Exit::Done(_) | Exit::Thread(_) => {}
            Exit::Watch(fd) => {
                if let Ok(Some(_)) = try_reap(pid) {
                    return;
                }
                // Reaped when it exits, so that it leaves no zombie; at a
                // runtime's shutdown, when herd exits.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        loop {
                            let Ok(mut ready) = fd.readable().await else {
                                return;
                            };
                            match try_reap(pid) {
                                Ok(None) => ready.clear_ready(),
                                _ => return,
                            }
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use tokio::io::AsyncReadExt;

    fn null() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    /// Runs `args` to its end: (exit status, stdout, stderr).
    async fn run(
        args: &[&str],
        env: &Environment,
        vars: &[(&str, &str)],
        pidfd: bool,
    ) -> (ExitStatus, String, String) {
        let null = null();
        let mut child = spawn_watched(&argv(args), env, vars, null.as_fd(), pidfd).unwrap();
        let (mut out, mut err) = child.take_output().unwrap();
        let (mut o, mut e) = (String::new(), String::new());
        out.read_to_string(&mut o).await.unwrap();
        err.read_to_string(&mut e).await.unwrap();
        (child.wait().await.unwrap(), o, e)
    }

    #[tokio::test]
    async fn the_child_gets_the_environment_and_the_attempts_variables() {
        let env = Environment::new(
            &[("HERD_SPAWN_EXTRA".into(), "extra value".into())],
            &["HERD_TASK_ID"],
        );
        let script =
            "echo \"$HERD_SPAWN_EXTRA|$HERD_TASK_ID|$HOME\"; env | grep -c '^HERD_TASK_ID='";
        for pidfd in [true, false] {
            let (status, out, _) = run(
                &["sh", "-c", script],
                &env,
                &[("HERD_TASK_ID", "t7")],
                pidfd,
            )
            .await;
            assert!(status.success());
            let home = std::env::var("HOME").unwrap_or_default();
            assert_eq!(out, format!("extra value|t7|{home}\n1\n"), "pidfd: {pidfd}");
        }
    }

    #[tokio::test]
    async fn exit_codes_signals_and_both_streams_come_back() {
        let env = Environment::new(&[], &[]);
        for pidfd in [true, false] {
            let (status, out, err) = run(
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                &env,
                &[],
                pidfd,
            )
            .await;
            assert_eq!(
                (status.code(), out.as_str(), err.as_str()),
                (Some(3), "out\n", "err\n")
            );
            let (status, _, _) = run(&["sh", "-c", "kill -TERM $$"], &env, &[], pidfd).await;
            assert_eq!(status.signal(), Some(libc_sigterm()), "pidfd: {pidfd}");
        }
    }

    fn libc_sigterm() -> i32 {
        Signal::SIGTERM as i32
    }

    /// Its own process group, no signal blocked, SIGPIPE not ignored (herd
    /// ignores it, as every Rust program does).
    #[tokio::test]
    async fn the_child_leads_its_own_group_with_signals_as_new() {
        let env = Environment::new(&[], &[]);
        let script =
            "cut -d' ' -f5 /proc/$$/stat; echo $$; grep -E '^Sig(Blk|Ign)' /proc/$$/status";
        let (status, out, _) = run(&["sh", "-c", script], &env, &[], true).await;
        assert!(status.success());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], lines[1], "process group = pid: {out}");
        let mask = |name: &str| {
            let line = lines.iter().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0, "{out}");
        let sigpipe = 1 << (Signal::SIGPIPE as u32 - 1);
        assert_eq!(mask("SigIgn:") & sigpipe, 0, "{out}");
    }

    #[tokio::test]
    async fn programs_are_looked_up_in_the_runners_path_when_it_sets_one() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("herd-spawn-tool");
        std::fs::write(&tool, "#!/bin/sh\necho found me\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}:/usr/bin:/bin", dir.path().display());
        let env = Environment::new(&[("PATH".into(), path.into())], &[]);
        let (status, out, _) = run(&["herd-spawn-tool"], &env, &[], true).await;
        assert!(status.success());
        assert_eq!(out, "found me\n");

        let missing = spawn(&argv(&["herd-no-such-tool"]), &env, &[], null().as_fd());
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let plain = Environment::new(&[], &[]);
        let missing = spawn(&argv(&["herd-no-such-tool"]), &plain, &[], null().as_fd());
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let nul = spawn(&argv(&["echo", "a\0b"]), &plain, &[], null().as_fd());
        assert_eq!(nul.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    /// A child dropped before its exit was seen leaves no zombie once it
    /// exits.
    #[tokio::test]
    async fn a_dropped_child_is_reaped_when_it_exits() {
        let env = Environment::new(&[], &[]);
        let child = spawn(&argv(&["sleep", "30"]), &env, &[], null().as_fd()).unwrap();
        let pid = child.pid();
        drop(child);
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten()
        };
        assert_eq!(
            state().map(|s| s != 'Z'),
            Some(true),
            "running before the kill"
        );
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        // The background reaper runs on this runtime: yield to it until the
        // process is gone (a zombie would stay).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {pid} left as {:?}",
                state()
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
