//! The committed XDP object (`data-plane/xdp/rauta_xdp.o`, embedded by the proxy so that a
//! clone builds with cargo alone) must be what its source compiles to. Wherever clang and
//! libbpf's headers are installed, this rebuilds it with `build.sh` into a temporary directory
//! and compares what the loader uses: the programs' instructions, the maps, license, read-only
//! data and BTF (types and line info). Elsewhere it says it skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sections the loader reads; debug info sections are left out (they are not loaded).
fn loaded(name: &str) -> bool {
    matches!(name, "xdp" | ".text" | ".maps" | "license" | ".BTF") || name.starts_with(".rodata")
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// The loaded sections of a little-endian ELF64 object, by name.
fn sections(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..6],
        b"\x7fELF\x02\x01",
        "{}: not ELF64 LE",
        path.display()
    );
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&b, 0x28),
        u16_at(&b, 0x3a),
        u16_at(&b, 0x3c),
        u16_at(&b, 0x3e),
    );
    let header = |i: usize| shoff + i * shentsize;
    let names_at = u64_at(&b, header(shstrndx) + 0x18);
    let mut out = BTreeMap::new();
    for i in 0..shnum {
        let h = header(i);
        let name_at = names_at + u32_at(&b, h);
        let end = b[name_at..].iter().position(|c| *c == 0).unwrap();
        let name = String::from_utf8_lossy(&b[name_at..name_at + end]).into_owned();
        let (offset, size) = (u64_at(&b, h + 0x18), u64_at(&b, h + 0x20));
        if loaded(&name) {
            out.insert(name, b[offset..offset + size].to_vec());
        }
    }
    out
}

#[test]
fn xdp_object_is_fresh() {
    let xdp = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("xdp");
    let clang = Command::new("clang").arg("--version").output();
    if clang.is_err() || !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!("SKIP xdp_object_is_fresh: clang or libbpf-dev not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rauta-xdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fresh = dir.join("rauta_xdp.o");
    let status = Command::new("sh")
        .arg(xdp.join("build.sh"))
        .arg(&fresh)
        .status()
        .expect("running build.sh");
    assert!(status.success(), "data-plane/xdp/build.sh failed");
    let (committed, rebuilt) = (sections(&xdp.join("rauta_xdp.o")), sections(&fresh));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        committed.contains_key("xdp"),
        "no xdp section: {committed:?}"
    );
    let differing: BTreeSet<&String> = committed
        .keys()
        .chain(rebuilt.keys())
        .filter(|name| committed.get(*name) != rebuilt.get(*name))
        .collect();
    assert!(
        differing.is_empty(),
        "data-plane/xdp/rauta_xdp.o is stale (sections {differing:?} differ from a fresh \
         build of rauta_xdp.c); refresh it with `data-plane/xdp/build.sh` and commit it"
    );
}
