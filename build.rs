//! Link flags for the microservice2 binary only (never for proc-macros or other crates).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MICROSERVICE2_NO_PACKED_RELOCS");
    // Pack the binary's relative relocations (DT_RELR): the loader then reads about 2 KB at
    // start instead of a 140 KB table, which keeps idle RSS down. It needs GNU ld 2.38+ (or
    // lld) and glibc 2.36+ where the binary runs; set MICROSERVICE2_NO_PACKED_RELOCS=1 for
    // older systems.
    let target = std::env::var("TARGET").unwrap_or_default();
    let opted_out = std::env::var_os("MICROSERVICE2_NO_PACKED_RELOCS").is_some();
    if target.ends_with("-linux-gnu") && !opted_out {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
