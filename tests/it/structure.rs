//! The source's structure, as `src/lib.rs`'s map describes it: modules import only from the
//! modules below them, every file in `src/` does one job in at most 500 lines and says why it
//! exists, and the map lists every module.

use std::path::{Path, PathBuf};

/// The top-level modules, from the top down: each may import only from those after it.
const LAYERS: [&str; 9] = [
    "serve",
    "routes",
    "ops",
    "gateway",
    "config",
    "tls",
    "avatar",
    "behaviour",
    "time",
];

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` but the crate roots, with its top-level module.
fn modules() -> Vec<(PathBuf, String, String)> {
    let mut files = Vec::new();
    source_files(&src(), &mut files);
    files
        .into_iter()
        .filter(|path| !path.ends_with("main.rs") && !path.ends_with("lib.rs"))
        .map(|path| {
            let relative = path.strip_prefix(src()).expect("under src");
            let top = relative
                .components()
                .next()
                .expect("a first component")
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("read a source file");
            (path, top, text)
        })
        .collect()
}

#[test]
fn modules_import_only_from_the_modules_below_them() {
    let mut violations = Vec::new();
    for (path, top, text) in modules() {
        let rank = LAYERS
            .iter()
            .position(|layer| *layer == top)
            .unwrap_or_else(|| panic!("{} is in no layer of LAYERS", path.display()));
        // What a file's unit tests use is not a dependency of the module.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for (index, _) in code.match_indices("crate::") {
            let used: String = code[index + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(used_rank) = LAYERS.iter().position(|layer| *layer == used) else {
                continue;
            };
            if used_rank < rank {
                violations.push(format!("{} imports crate::{used}", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "imports from above: {violations:#?}");
}

#[test]
fn every_source_file_says_why_it_exists_in_at_most_500_lines() {
    for (path, _, text) in modules() {
        let lines = text.lines().count();
        assert!(lines <= 500, "{}: {lines} lines", path.display());
        let declared_inline = text.starts_with("//!");
        assert!(
            declared_inline,
            "{} opens without a //! doc",
            path.display()
        );
    }
}

#[test]
fn the_crate_map_lists_every_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let mut declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|name| name.trim_end_matches(';'))
        .collect();
    declared.sort_unstable();
    let mut layers = LAYERS.to_vec();
    layers.sort_unstable();
    assert_eq!(declared, layers, "lib.rs declares what LAYERS orders");
    for module in LAYERS {
        assert!(
            lib.contains(&format!("- [`{module}`]")),
            "lib.rs's map does not describe {module}"
        );
    }
}
