//! Places the code `herd run` executes together at the start of the
//! binary's text, in release builds linked by LLD.
//!
//! The kernel maps a binary's code 64 KiB around each page that faults in,
//! so code spread over the whole text makes nearly all of it resident: a
//! tenth of herd's peak memory in `herd run`. `hot-code.txt` lists the
//! functions `herd run` executes (written by `benches/hot_code.sh`); LLD's
//! `--symbol-ordering-file` lays them out first, in that order. Names it
//! does not find (after a toolchain or dependency update) change nothing but
//! the layout.
//!
//! Rust links with LLD on x86_64 Linux from 1.90 on; other targets and
//! linkers (GNU ld has no such option) are left alone, as is an explicit
//! linker choice. `HERD_NO_CODE_ORDER=1` turns it off.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=hot-code.txt");
    println!("cargo:rerun-if-env-changed=HERD_NO_CODE_ORDER");
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var("HERD_NO_CODE_ORDER").is_ok_and(|v| v == "1")
        || chooses_linker()
        || !links_with_lld()
    {
        return;
    }
    let list = format!("{}/hot-code.txt", env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rustc-link-arg-bin=herd=-Wl,--symbol-ordering-file={list}");
    println!("cargo:rustc-link-arg-bin=herd=-Wl,--no-warn-symbol-ordering");
}

/// Whether the build names a linker of its own.
fn chooses_linker() -> bool {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || env::var_os("RUSTC_LINKER").is_some()
        || flags.split('\x1f').any(|flag| {
            flag.contains("linker") || flag.contains("fuse-ld") || flag.contains("link-self")
        })
}

/// Whether this rustc links x86_64 Linux binaries with its own LLD (1.90 on).
fn links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
