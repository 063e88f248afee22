//! Sets `ember_vnni` when the compiler is Rust 1.89 or newer, whose standard library has the
//! AVX-512 VNNI intrinsics that `kernels/x86_64_vnni.rs` uses; older compilers (the workspace's
//! minimum is 1.85) build without that kernel and prefill keeps the f32 panel.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ember_vnni)");
    println!("cargo::rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo::rustc-cfg=ember_vnni");
    }
}
