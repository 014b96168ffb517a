//! Starting a command and waiting for it: `posix_spawn` with an
//! environment prepared once, its exit looked for when it is waited for
//! and watched through a pidfd if it has not exited then.
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

/// The environment every command starts with, encoded once: herd's own
/// (as it was when the runner was made), with the runner's variables set
/// over it.
pub(crate) struct Environment {
    /// `KEY=value`.
    base: Vec<CString>,
    /// Set by each spawn, so never in `base`.
    per_spawn: &'static [&'static str],
    /// The runner's own variables, as given.
    added: Vec<(OsString, OsString)>,
    /// The runner's `PATH`, when it sets one: programs are looked up there.
    path: Option<OsString>,
    /// A variable of the runner's that no environment can hold (a NUL byte).
    invalid: Option<OsString>,
}

impl Environment {
    /// herd's environment, without the variables each spawn sets.
    pub(crate) fn inherited(per_spawn: &'static [&'static str]) -> Environment {
        let mut env = Environment {
            base: Vec::new(),
            per_spawn,
            added: Vec::new(),
            path: None,
            invalid: None,
        };
        for (key, value) in std::env::vars_os() {
            env.put(&key, &value);
        }
        env
    }

    /// Sets `key` for every command (a later value wins; the per-spawn
    /// variables win over it).
    pub(crate) fn set(&mut self, key: OsString, value: OsString) {
        self.put(&key, &value);
        if key == "PATH" {
            self.path = Some(value.clone());
        }
        self.added.push((key, value));
    }

    /// The variables [`Environment::set`] was given.
    pub(crate) fn added(&self) -> &[(OsString, OsString)] {
        &self.added
    }

    fn put(&mut self, key: &OsStr, value: &OsStr) {
        if self.per_spawn.iter().any(|p| OsStr::new(p) == key) {
            return;
        }
        let key = key.as_bytes();
        self.base.retain(|kv| {
            let kv = kv.as_bytes();
            !(kv.starts_with(key) && kv.get(key.len()) == Some(&b'='))
        });
        match pair(key, value.as_bytes()) {
            Ok(kv) => self.base.push(kv),
            Err(_) => self.invalid = Some(OsStr::from_bytes(key).to_owned()),
        }
    }
}

impl std::fmt::Debug for Environment {
    /// The runner's own variables only: herd's may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("inherited_and_set", &self.base.len())
            .field("added", &self.added)
            .finish()
    }
}

/// `KEY=value` as a C string; `None` if either holds a NUL byte.
fn pair(key: &[u8], value: &[u8]) -> Result<CString, std::ffi::NulError> {
    let mut bytes = Vec::with_capacity(key.len() + 1 + value.len() + 1);
    bytes.extend_from_slice(key);
    bytes.push(b'=');
    bytes.extend_from_slice(value);
    CString::new(bytes)
}

/// An error for a value that a command line or an environment cannot
/// carry: C strings end at a NUL byte.
fn nul_error(what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte, which no command line or environment can carry"),
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
    /// Not watched yet (see [`Child::wait`]).
    Unwatched {
        /// Through a pidfd when it is watched (false: the fallback, for
        /// its tests).
        pidfd: bool,
    },
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
    if let Some(key) = &env.invalid {
        return Err(nul_error(format_args!(
            "the runner's environment variable {key:?}"
        )));
    }
    let args = argv
        .iter()
        .enumerate()
        .map(|(i, a)| {
            CString::new(a.as_bytes()).map_err(|_| nul_error(format_args!("argument {i}")))
        })
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
        let kv = pair(key.as_bytes(), value.as_bytes())
            .map_err(|_| nul_error(format_args!("the variable {key}")))?;
        envp.push(kv);
    }
    let envp: Vec<&std::ffi::CStr> = env
        .base
        .iter()
        .chain(&envp)
        .map(CString::as_c_str)
        .collect();

    let (out_read, out_write) = output_pipe()?;
    let (err_read, err_write) = output_pipe()?;
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

    let mut child = Child {
        pid,
        output: None,
        exit: Exit::Unwatched { pidfd },
    };
    match (
        pipe::Receiver::from_owned_fd_unchecked(out_read),
        pipe::Receiver::from_owned_fd_unchecked(err_read),
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

/// A pipe for one of the child's output streams: (read end, write end),
/// both closed on exec. herd's read end does not block; the child's end
/// does, as programs expect of their stdout. Made so here rather than by
/// `pipe::Receiver::from_owned_fd`, which checks the descriptor's type
/// and reads and sets its flags: three system calls a pipe instead of one.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::empty())?;
    Ok((read, write))
}

/// How to learn of `pid`'s exit: a pidfd registered with the runtime, or
/// where there are none (or `pidfd` is false), a blocking `waitpid` on
/// tokio's blocking pool.
fn watch(pid: Pid, pidfd: bool) -> Exit {
    let fd = match pidfd {
        true => rustix::process::pidfd_open(rustix_pid(pid), rustix::process::PidfdFlags::empty()),
        false => Err(rustix::io::Errno::NOSYS),
    };
    match fd.map_err(io::Error::from).and_then(watch_readable) {
        Ok(fd) => Exit::Watch(fd),
        Err(_) => Exit::Thread(tokio::task::spawn_blocking(move || wait_blocking(pid))),
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
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "not found in the PATH the runner sets",
            )
        })
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn wait_blocking(pid: Pid) -> io::Result<ExitStatus> {
    loop {
        if let Some(status) = reap(pid, WaitOptions::empty())? {
            return Ok(status);
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
    ///
    /// The exit is watched from the first wait on, not from the spawn: a
    /// caller that reads the output to its end first finds most commands
    /// already exited, and reaps them without a pidfd (whose opening,
    /// registration and closing were four of the thirty-odd system calls
    /// herd made for a command).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match &mut self.exit {
                Exit::Done(status) => return Ok(*status),
                Exit::Unwatched { pidfd } => {
                    self.exit = match try_reap(self.pid)? {
                        Some(status) => Exit::Done(status),
                        None => watch(self.pid, *pidfd),
                    };
                }
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

/// The child's exit status if it has exited (and is now reaped); with
/// `NOHANG`, `None` while it runs.
fn reap(pid: Pid, options: WaitOptions) -> io::Result<Option<ExitStatus>> {
    loop {
        match rustix::process::waitpid(Some(rustix_pid(pid)), options) {
            Ok(found) => return Ok(found.map(|(_, s)| ExitStatus::from_raw(s.as_raw()))),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn try_reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    reap(pid, WaitOptions::NOHANG)
}

fn rustix_pid(pid: Pid) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(pid.as_raw()).expect("a spawned pid is positive")
}

impl Drop for Child {
    fn drop(&mut self) {
        let pid = self.pid;
        let exit = std::mem::replace(&mut self.exit, Exit::Done(ExitStatus::from_raw(0)));
        // Reaped already, or by the blocking wait.
        if matches!(exit, Exit::Done(_) | Exit::Thread(_)) {
            return;
        }
        if let Ok(Some(_)) = try_reap(pid) {
            return;
        }
        // Reaped when it exits, so that it leaves no zombie; at a
        // runtime's shutdown, when herd exits.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let exit = match exit {
            Exit::Unwatched { pidfd } => watch(pid, pidfd),
            exit => exit,
        };
        let Exit::Watch(fd) = exit else { return };
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
        let mut env = Environment::inherited(&["HERD_TASK_ID"]);
        env.set("HERD_SPAWN_EXTRA".into(), "first".into());
        env.set("HERD_SPAWN_EXTRA".into(), "extra value".into());
        // The attempt's own value wins over one the runner sets.
        env.set("HERD_TASK_ID".into(), "t0".into());
        let script = "echo \"$HERD_SPAWN_EXTRA|$HERD_TASK_ID|$HOME\"; \
             env | grep -c -e '^HERD_TASK_ID=' -e '^HERD_SPAWN_EXTRA='";
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
            assert_eq!(out, format!("extra value|t7|{home}\n2\n"), "pidfd: {pidfd}");
        }
    }

    #[tokio::test]
    async fn exit_codes_signals_and_both_streams_come_back() {
        let env = Environment::inherited(&[]);
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
            assert_eq!(
                status.signal(),
                Some(Signal::SIGTERM as i32),
                "pidfd: {pidfd}"
            );
        }
    }

    /// Its own process group, no signal blocked, SIGPIPE not ignored (herd
    /// ignores it, as every Rust program does).
    #[tokio::test]
    async fn the_child_leads_its_own_group_with_signals_as_new() {
        let env = Environment::inherited(&[]);
        // The masks are read by the process the shell becomes (`exec`), not
        // of the shell from a child: dash blocks every signal while it
        // forks, and a child reading it then sees them blocked.
        let script =
            "cut -d' ' -f5 /proc/$$/stat; echo $$; exec grep -E '^Sig(Blk|Ign)' /proc/self/status";
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
        let mut env = Environment::inherited(&[]);
        env.set("PATH".into(), path.into());
        let (status, out, _) = run(&["herd-spawn-tool"], &env, &[], true).await;
        assert!(status.success());
        assert_eq!(out, "found me\n");

        let missing = spawn(&argv(&["herd-no-such-tool"]), &env, &[], null().as_fd());
        let missing = missing.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing.to_string().contains("PATH"), "{missing}");
        let plain = Environment::inherited(&[]);
        let missing = spawn(&argv(&["herd-no-such-tool"]), &plain, &[], null().as_fd());
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// What no C string can hold fails the spawn, naming what held it.
    #[test]
    fn nul_bytes_are_refused_by_name() {
        let plain = Environment::inherited(&[]);
        let nul = spawn(&argv(&["echo", "a\0b"]), &plain, &[], null().as_fd()).unwrap_err();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
        assert!(
            nul.to_string()
                .starts_with("argument 1 contains a NUL byte"),
            "{nul}"
        );
        let mut env = Environment::inherited(&[]);
        env.set("HERD_SPAWN_BAD".into(), "a\0b".into());
        let nul = spawn(&argv(&["true"]), &env, &[], null().as_fd()).unwrap_err();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
        assert!(nul.to_string().contains("\"HERD_SPAWN_BAD\""), "{nul}");
    }

    /// A child still running when it is first waited for is watched until
    /// it exits, through a pidfd or (false) a blocking wait. (Waited for
    /// after its output ends, as `run` does, a child has mostly exited and
    /// is reaped at once, so this is where both watches are sure to run.)
    #[tokio::test]
    async fn a_running_child_is_watched_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("go");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let fifo_arg = fifo.to_str().unwrap();
        let env = Environment::inherited(&[]);
        for pidfd in [true, false] {
            let null = null();
            let args = ["sh", "-c", "read x < \"$1\"; exit 4", "sh", fifo_arg];
            let mut child = spawn_watched(&argv(&args), &env, &[], null.as_fd(), pidfd).unwrap();
            let mut wait = std::pin::pin!(child.wait());
            // It waits for a writer on the FIFO: it cannot have exited.
            assert!(futures::poll!(wait.as_mut()).is_pending(), "pidfd: {pidfd}");
            // Opened for reading too, so that opening it never blocks, even
            // if the child has not come to its end of it.
            let mut go = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .unwrap();
            std::io::Write::write_all(&mut go, b"go\n").unwrap();
            let status = wait.await.unwrap();
            assert_eq!(status.code(), Some(4), "pidfd: {pidfd}");
        }
    }

    /// A child dropped before its exit was seen leaves no zombie once it
    /// exits.
    #[tokio::test]
    async fn a_dropped_child_is_reaped_when_it_exits() {
        let env = Environment::inherited(&[]);
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
        // A pidfd of the test's own says when the child has exited (it
        // stays readable, reaped or not).
        let exited = watch_readable(
            rustix::process::pidfd_open(rustix_pid(pid), rustix::process::PidfdFlags::empty())
                .unwrap(),
        )
        .unwrap();
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        let _ready = exited.readable().await.unwrap();
        // The background reaper is woken by the same exit, on this
        // runtime: yielding lets it run.
        for _ in 0..1_000 {
            if state().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("pid {pid} left as {:?}", state());
    }
}
