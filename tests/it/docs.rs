//! The documentation kept true: every flag and environment variable the binary's `--help`
//! lists (serve and gateway mode) is in docs/configuration.md, every one named there exists,
//! and the README stays short, with its two commands and working links.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::binary;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {relative}: {err}"))
}

/// The `--flag` and `M1_*`/`M2_*` names in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    for (start, _) in text.char_indices() {
        let flag = text[start..].starts_with("--")
            && (start == 0
                || !bytes[start - 1].is_ascii_alphanumeric() && bytes[start - 1] != b'-');
        let var = (text[start..].starts_with("M1_") || text[start..].starts_with("M2_"))
            && (start == 0 || !bytes[start - 1].is_ascii_alphanumeric());
        if !(flag || var) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let name = name.trim_end_matches(['-', '_']).to_owned();
        if name.len() > 3 {
            found.insert(name);
        }
    }
    found
}

fn help(args: &[&str]) -> String {
    let output = binary(args).output().expect("run --help");
    assert!(output.status.success(), "{args:?}");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

#[test]
fn every_flag_and_variable_is_documented_and_every_documented_one_exists() {
    let mut listed = names(&help(&["--help"]));
    listed.extend(names(&help(&["gateway", "--help"])));
    assert!(listed.contains("--write-timeout") && listed.contains("M1_CLIENT"));
    let documented = names(&read("docs/configuration.md"));
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/configuration.md: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&listed).collect();
    assert!(
        unknown.is_empty(),
        "in docs/configuration.md, unknown to --help: {unknown:?}"
    );
}

#[test]
fn the_readme_is_short_has_its_two_commands_and_every_link_resolves() {
    let readme = read("README.md");
    assert!(readme.lines().count() <= 200, "README.md over 200 lines");
    assert!(readme.contains("cargo run --release") && readme.contains("cargo test"));
    for doc in [
        "configuration",
        "behaviour",
        "gateway",
        "operations",
        "deployment",
        "performance",
    ] {
        assert!(
            readme.contains(&format!("](docs/{doc}.md)")),
            "README: no link to {doc}"
        );
    }
    let docs = ["README.md"].into_iter().map(str::to_owned).chain(
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
            .expect("docs/")
            .map(|entry| {
                format!(
                    "docs/{}",
                    entry.expect("an entry").file_name().to_string_lossy()
                )
            }),
    );
    for doc in docs {
        let text = read(&doc);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(&doc);
        let dir = dir.parent().expect("a directory");
        for (index, _) in text.match_indices("](") {
            let target: String = text[index + 2..]
                .chars()
                .take_while(|c| *c != ')' && *c != '#')
                .collect();
            if target.is_empty() || target.starts_with("http") {
                continue;
            }
            assert!(
                dir.join(&target).exists(),
                "{doc} links to {target}, which does not exist"
            );
        }
    }
}
