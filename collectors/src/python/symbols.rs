//! Where to put the GIL probes in an interpreter file: the file offsets of
//! CPython's `take_gil` and `drop_gil`, or of `PyEval_RestoreThread` when
//! those cannot be found.
//!
//! Reads the ELF file (libpython or the python executable) and, for a stripped
//! one, the debug file named by its build-id under `DEBUG_DIR/.build-id/`.
//! Only the headers and symbol tables are read (`object`'s read cache, no whole
//! file in memory). Needs read access to the files; runs once per distinct file.
//!
//! `take_gil` and `drop_gil` are static, so only a full symbol table (`.symtab`)
//! names them; link-time optimisation may rename them (`take_gil.lto_priv.0` in
//! Debian's build) and split cold paths off (`take_gil.lto_priv.0.cold`,
//! which is not the entry). Symbols give virtual addresses; uprobes want file
//! offsets, computed with the loadable segments of the file itself (a debug
//! file's sections carry addresses but no code).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol, ReadCache, SymbolKind};

/// How a process's GIL is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `take_gil` and `drop_gil` from the interpreter file's own `.symtab`.
    Symtab,
    /// `take_gil` and `drop_gil` from a debug file found by build-id.
    DebugInfo,
    /// `PyEval_RestoreThread` (exported): only waits after a blocking call
    /// (I/O, sleep, a lock) are seen, not the forced switches between
    /// CPU-bound threads, and holds are not measured.
    Fallback,
}

impl Mode {
    pub const ALL: [Self; 3] = [Self::Symtab, Self::DebugInfo, Self::Fallback];

    /// The `mode` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Symtab => "symtab",
            Self::DebugInfo => "debuginfo",
            Self::Fallback => "fallback",
        }
    }
}

/// File offsets in the interpreter file to attach the probes at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub mode: Mode,
    /// `take_gil`, or `PyEval_RestoreThread` in fallback mode: entry and return.
    pub take: u64,
    /// `drop_gil`'s entry; `None` in fallback mode, or when only `take_gil` has a symbol.
    pub drop: Option<u64>,
    /// `PyEval_SaveThread`, where builds that inline `drop_gil` into it
    /// (Debian's) release the GIL around blocking calls; `None` in fallback mode.
    pub release: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("opening {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing ELF file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error(
        "{}: no take_gil in its symbol table or in a debug file under {}, and no PyEval_RestoreThread",
        path.display(),
        debug_dir.display()
    )]
    NoSymbols { path: PathBuf, debug_dir: PathBuf },
    #[error("{}: {symbol} at {address:#x} is outside the file's loadable segments", path.display())]
    OutsideSegments {
        path: PathBuf,
        symbol: &'static str,
        address: u64,
    },
}

/// Finds the probe offsets in `binary`, looking in `debug_dir` for its debug file.
pub fn resolve(binary: &Path, debug_dir: &Path) -> Result<Offsets, SymbolError> {
    let cache = open(binary)?;
    let elf = parse(binary, &cache)?;
    let segments: Vec<Segment> = elf
        .segments()
        .map(|segment| {
            let (offset, size) = segment.file_range();
            Segment {
                address: segment.address(),
                offset,
                size,
            }
        })
        .collect();
    let offset = |symbol: &'static str, address: u64| {
        segments
            .iter()
            .find(|s| address >= s.address && address - s.address < s.size)
            .map(|s| address - s.address + s.offset)
            .ok_or_else(|| SymbolError::OutsideSegments {
                path: binary.to_path_buf(),
                symbol,
                address,
            })
    };
    let exported = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    };
    let in_file = |mode, functions: GilFunctions| -> Result<Offsets, SymbolError> {
        Ok(Offsets {
            mode,
            take: offset("take_gil", functions.take)?,
            drop: functions.drop.map(|address| offset("drop_gil", address)).transpose()?,
            release: exported("PyEval_SaveThread")
                .map(|address| offset("PyEval_SaveThread", address))
                .transpose()?,
        })
    };

    if let Some(functions) = gil_functions(elf.symbols()) {
        return in_file(Mode::Symtab, functions);
    }
    if let Some(debug) = debug_file(&elf, debug_dir) {
        let debug_cache = open(&debug)?;
        let debug_elf = parse(&debug, &debug_cache)?;
        if let Some(functions) = gil_functions(debug_elf.symbols()) {
            return in_file(Mode::DebugInfo, functions);
        }
    }
    match exported("PyEval_RestoreThread") {
        Some(address) => Ok(Offsets {
            mode: Mode::Fallback,
            take: offset("PyEval_RestoreThread", address)?,
            drop: None,
            release: None,
        }),
        None => Err(SymbolError::NoSymbols {
            path: binary.to_path_buf(),
            debug_dir: debug_dir.to_path_buf(),
        }),
    }
}

struct Segment {
    address: u64,
    offset: u64,
    size: u64,
}

/// Virtual addresses of the GIL functions in one symbol table.
struct GilFunctions {
    take: u64,
    drop: Option<u64>,
}

fn open(path: &Path) -> Result<ReadCache<File>, SymbolError> {
    File::open(path)
        .map(ReadCache::new)
        .map_err(|source| SymbolError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn parse<'a>(path: &Path, cache: &'a ReadCache<File>) -> Result<object::File<'a, &'a ReadCache<File>>, SymbolError> {
    object::File::parse(cache).map_err(|source| SymbolError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// `DEBUG_DIR/.build-id/ab/cdef….debug` for a file with build-id `abcdef…`, if it exists.
fn debug_file<'a>(elf: &object::File<'a, &'a ReadCache<File>>, debug_dir: &Path) -> Option<PathBuf> {
    let id = elf.build_id().ok().flatten()?;
    let (first, rest) = id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let path = debug_dir
        .join(".build-id")
        .join(format!("{first:02x}"))
        .join(format!("{rest}.debug"));
    path.exists().then_some(path)
}

/// `take_gil` and `drop_gil` in `symbols`, exact names preferred over renamed copies.
fn gil_functions<'data: 'file, 'file, S: ObjectSymbol<'data>>(
    symbols: impl Iterator<Item = S>,
) -> Option<GilFunctions> {
    let mut take: Option<(bool, u64)> = None;
    let mut drop: Option<(bool, u64)> = None;
    for symbol in symbols {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        for (base, slot) in [("take_gil", &mut take), ("drop_gil", &mut drop)] {
            if let Some(exact) = gil_name(name, base)
                && slot.is_none_or(|(was_exact, _)| exact && !was_exact)
            {
                *slot = Some((exact, symbol.address()));
            }
        }
    }
    Some(GilFunctions {
        take: take?.1,
        drop: drop.map(|(_, address)| address),
    })
}

/// Whether `name` is the function `base` (`Some(true)`) or a whole copy of it
/// that the compiler renamed (`Some(false)`: `.lto_priv.N`, `.isra.N`,
/// `.constprop.N`). Split-off parts (`.cold`, `.part.N`) are not the function's
/// entry, and a probe there would not see every call.
fn gil_name(name: &str, base: &str) -> Option<bool> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(true);
    }
    let suffix = rest.strip_prefix('.')?;
    suffix
        .split('.')
        .all(|part| {
            matches!(part, "lto_priv" | "isra" | "constprop")
                || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        })
        .then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_renamed_copies_count_split_parts_do_not() {
        assert_eq!(gil_name("take_gil", "take_gil"), Some(true));
        assert_eq!(gil_name("take_gil.lto_priv.0", "take_gil"), Some(false));
        assert_eq!(gil_name("drop_gil.isra.0", "drop_gil"), Some(false));
        assert_eq!(gil_name("drop_gil.constprop.0.isra.0", "drop_gil"), Some(false));
        assert_eq!(gil_name("take_gil.lto_priv.0.cold", "take_gil"), None);
        assert_eq!(gil_name("take_gil.part.0", "take_gil"), None);
        assert_eq!(gil_name("take_gil2", "take_gil"), None);
        assert_eq!(gil_name("_take_gil", "take_gil"), None);
    }

    /// Debian's python3.11-dbg (installed by `packaging/install-deps.sh
    /// --test`) ships a debug interpreter with a full symbol table, and the
    /// debug file of the stripped `/usr/bin/python3.11`.
    fn require(path: &str) -> &Path {
        let path = Path::new(path);
        assert!(
            path.exists(),
            "{} is missing: run packaging/install-deps.sh --test",
            path.display()
        );
        path
    }

    #[test]
    fn symtab_of_a_debug_interpreter() {
        let offsets = resolve(require("/usr/bin/python3.11d"), Path::new("/nonexistent")).expect("resolves");
        assert_eq!(offsets.mode, Mode::Symtab);
        assert!(offsets.drop.is_some_and(|drop| drop != offsets.take), "{offsets:?}");
        assert!(offsets.release.is_some(), "{offsets:?}");
    }

    #[test]
    fn debug_file_of_a_stripped_interpreter_then_fallback_without_it() {
        let python = require("/usr/bin/python3.11");
        let offsets = resolve(python, Path::new("/usr/lib/debug")).expect("resolves");
        assert_eq!(offsets.mode, Mode::DebugInfo, "{offsets:?}");
        assert!(offsets.drop.is_some());
        let fallback = resolve(python, Path::new("/nonexistent")).expect("resolves");
        assert_eq!(fallback.mode, Mode::Fallback);
        assert_eq!((fallback.drop, fallback.release), (None, None));
        assert_ne!(fallback.take, offsets.take);
        // The offsets are within the file, where its code is.
        let size = std::fs::metadata(python).expect("stat").len();
        assert!(offsets.take < size && fallback.take < size);
    }

    #[test]
    fn errors_name_the_file() {
        let missing = resolve(Path::new("/nonexistent/python3"), Path::new("/usr/lib/debug"));
        assert!(missing.is_err_and(|e| e.to_string().starts_with("opening /nonexistent/python3: ")));
        let text = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let not_elf = resolve(Path::new(text), Path::new("/usr/lib/debug"));
        assert!(not_elf.is_err_and(|e| e.to_string().starts_with(&format!("parsing ELF file {text}: "))));
        let no_python = resolve(Path::new("/bin/true"), Path::new("/nonexistent"));
        assert!(no_python.is_err_and(|e| matches!(e, SymbolError::NoSymbols { .. })));
    }
}
