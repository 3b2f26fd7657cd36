//! Link flags for the microservice2 binary only (never for proc-macros or other crates).

use std::path::Path;
use std::process::{Command, Stdio};

const PACKED: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MICROSERVICE2_NO_PACKED_RELOCS");
    // Pack the binary's relative relocations (DT_RELR): the loader then reads about 2 KB at
    // start instead of a 140 KB table, which keeps idle RSS down. It needs GNU ld 2.38+ (or
    // lld) and glibc 2.36+ where the binary runs, so it is used only when a probe program
    // linked the same way runs here. MICROSERVICE2_NO_PACKED_RELOCS=1 turns it off.
    let target = std::env::var("TARGET").unwrap_or_default();
    let native = std::env::var("HOST").is_ok_and(|host| host == target);
    let opted_out = std::env::var_os("MICROSERVICE2_NO_PACKED_RELOCS").is_some();
    if !target.ends_with("-linux-gnu") || !native || opted_out {
        return;
    }
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return;
    };
    if probe_runs(Path::new(&out_dir)) {
        println!("cargo:rustc-link-arg-bins={PACKED}");
    } else {
        println!(
            "cargo:warning=relative relocations not packed: the linker or glibc lacks DT_RELR"
        );
    }
}

/// Whether a C program linked with packed relocations by the system's `cc` (the linker rustc
/// uses here) builds and runs.
fn probe_runs(out_dir: &Path) -> bool {
    let source = out_dir.join("relr_probe.c");
    let program = out_dir.join("relr_probe");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let quiet = |command: &mut Command| {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    quiet(
        Command::new("cc")
            .arg(&source)
            .arg("-o")
            .arg(&program)
            .arg(PACKED),
    ) && quiet(&mut Command::new(&program))
}
