//! Which kernel code addresses belong to a watched function, from
//! `PROCFS/kallsyms`.
//!
//! Reads `PROCFS/kallsyms` once, when the collector is built; needs root (or
//! `kernel.kptr_restrict=0` and CAP_SYSLOG): otherwise every address reads 0.
//! Only the ranges of watched functions are kept (a few dozen), not the
//! 100 000+ symbols, so a sample's lookup is a binary search in a tiny table.
//! The file (5 MB here) is read a line at a time: holding it whole left
//! megabytes in the allocator's per-thread arenas at every build.
//! The compiler splits and clones functions into `NAME.part.N`,
//! `NAME.constprop.N`, `NAME.isra.N` and `NAME.cold`: each counts as `NAME`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::Unavailable;

/// A watched function's code: `[start, end)` and its index in the watch-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
    watch: usize,
}

/// The code ranges of the watched functions, sorted by address.
#[derive(Debug, Default)]
pub struct Watched {
    ranges: Vec<Range>,
}

/// A symbol's name without the suffixes the compiler adds to clones and
/// split-off parts: `smap_gather_stats.part.0` is `smap_gather_stats`.
pub fn base_name(symbol: &str) -> &str {
    symbol.split_once('.').map_or(symbol, |(base, _)| base)
}

impl Watched {
    /// Reads `path` (kallsyms' format) and keeps the ranges of `watch`.
    pub fn load(path: &Path, watch: &[String]) -> Result<Self, Unavailable> {
        let file = File::open(path).map_err(|error| unreadable(path, &error))?;
        let parsed =
            Self::parse(BufReader::with_capacity(64 * 1024, file), watch).map_err(|error| unreadable(path, &error))?;
        if parsed.lines > 0 && parsed.all_hidden {
            return Err(hidden(path));
        }
        Ok(parsed.watched)
    }

    /// Whether `path` shows code addresses to this process, from its first
    /// text symbol: the kernel hides all or none. Cheap, so it can come
    /// before the perf probe and name the right reason (a permission) to a
    /// user who is not root.
    pub fn check_visible(path: &Path) -> Result<(), Unavailable> {
        let file = File::open(path).map_err(|error| unreadable(path, &error))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|error| unreadable(path, &error))?;
            if let Some((address, _)) = text_symbol(&line) {
                return if address == 0 { Err(hidden(path)) } else { Ok(()) };
            }
        }
        Ok(())
    }

    fn parse(mut text: impl BufRead, watch: &[String]) -> std::io::Result<Parsed> {
        // Every text symbol's start: a function ends where the next one starts.
        let mut starts = Vec::new();
        let mut found = Vec::new();
        let mut all_hidden = true;
        let mut lines = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if text.read_line(&mut line)? == 0 {
                break;
            }
            lines += 1;
            let Some((address, name)) = text_symbol(&line) else {
                continue;
            };
            if address == 0 {
                continue;
            }
            all_hidden = false;
            starts.push(address);
            if let Some(index) = watch.iter().position(|w| w == base_name(name)) {
                found.push((address, index));
            }
        }
        starts.sort_unstable();
        let mut ranges: Vec<Range> = found
            .into_iter()
            .map(|(start, watch)| {
                let next = starts.partition_point(|&s| s <= start);
                // The last text symbol has no known end: a page is generous.
                let end = starts.get(next).copied().unwrap_or(start + 4096);
                Range { start, end, watch }
            })
            .collect();
        ranges.sort_unstable_by_key(|r| r.start);
        ranges.dedup_by_key(|r| r.start);
        Ok(Parsed {
            watched: Self { ranges },
            all_hidden,
            lines,
        })
    }

    /// The watch-list index of the function `address` is in, if watched.
    pub fn find(&self, address: u64) -> Option<usize> {
        let index = self.ranges.partition_point(|r| r.start <= address).checked_sub(1)?;
        let range = self.ranges[index];
        (address < range.end).then_some(range.watch)
    }

    /// How many code ranges the watch-list entry `watch` has in this kernel:
    /// 0 when it is inlined everywhere or absent.
    pub fn ranges_of(&self, watch: usize) -> usize {
        self.ranges.iter().filter(|r| r.watch == watch).count()
    }
}

/// A code symbol's address and name (text and weak text symbols: the kinds
/// a call chain lands in), or `None` for any other line.
fn text_symbol(line: &str) -> Option<(u64, &str)> {
    let mut fields = line.split_ascii_whitespace();
    let (Some(address), Some("t" | "T" | "w" | "W"), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
        return None;
    };
    u64::from_str_radix(address, 16).ok().map(|address| (address, name))
}

fn unreadable(path: &Path, error: &std::io::Error) -> Unavailable {
    Unavailable::new(format!("cannot read {}: {error}", path.display()))
}

fn hidden(path: &Path) -> Unavailable {
    Unavailable::new(format!(
        "{} shows every address as 0 (needs root, or kernel.kptr_restrict=0 with CAP_SYSLOG)",
        path.display()
    ))
}

struct Parsed {
    watched: Watched,
    all_hidden: bool,
    /// Lines read: an empty file hides nothing.
    lines: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempTree;

    /// Lines as this dev VM's kernel (6.18) prints them.
    const KALLSYMS: &str = "\
ffffffff81771140 t __pfx_smaps_account
ffffffff81771150 t smaps_account
ffffffff81771fc0 t __pfx_smap_gather_stats.part.0
ffffffff81771fd0 t smap_gather_stats.part.0
ffffffff817722b0 t __pfx_show_smap
ffffffff817722c0 t show_smap
ffffffff81689e20 t mem_cgroup_css_rstat_flush
ffffffff81689f00 T css_rstat_flush.constprop.0
ffffffff81689f80 d some_data
ffffffffc0000000 t ena_io_poll\t[ena]
ffffffffc0000400 t mem_cgroup_nr_lru_pages.isra.3\t[fake]
";

    fn watch() -> Vec<String> {
        [
            "smap_gather_stats",
            "css_rstat_flush",
            "mem_cgroup_nr_lru_pages",
            "absent",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn suffixes_are_the_base_function() {
        assert_eq!(base_name("smap_gather_stats.part.0"), "smap_gather_stats");
        assert_eq!(base_name("css_rstat_flush.constprop.0"), "css_rstat_flush");
        assert_eq!(base_name("foo.isra.3"), "foo");
        assert_eq!(base_name("foo.cold"), "foo");
        assert_eq!(base_name("foo"), "foo");
    }

    #[test]
    fn addresses_inside_watched_functions_are_found() {
        let parsed = Watched::parse(KALLSYMS.as_bytes(), &watch()).unwrap();
        assert!(!parsed.all_hidden);
        let watched = parsed.watched;
        assert_eq!(watched.find(0xffffffff81771fd0), Some(0), "first byte");
        assert_eq!(
            watched.find(0xffffffff817722af),
            Some(0),
            "up to the next symbol's padding"
        );
        assert_eq!(watched.find(0xffffffff817722b0), None, "the next function's __pfx_");
        assert_eq!(watched.find(0xffffffff81771150), None);
        // Ends at the data symbol? No: only text symbols bound functions, so
        // css_rstat_flush runs to the module's first function.
        assert_eq!(watched.find(0xffffffff81689f90), Some(1));
        assert_eq!(watched.find(0xffffffffc0000410), Some(2), "module symbols count");
        assert_eq!(watched.find(0), None);
        assert_eq!(watched.ranges_of(0), 1);
        assert_eq!(watched.ranges_of(3), 0);
    }

    #[test]
    fn visibility_is_told_by_the_first_text_symbol() {
        let tree = TempTree::new(&[
            ("shown", KALLSYMS),
            (
                "hidden",
                "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n",
            ),
        ]);
        assert!(Watched::check_visible(&tree.root().join("shown")).is_ok());
        let refused = Watched::check_visible(&tree.root().join("hidden")).expect_err("hidden");
        assert!(refused.reason.contains("every address as 0"), "{refused}");
        assert!(Watched::check_visible(&tree.root().join("absent")).is_err());
    }

    #[test]
    fn hidden_addresses_mean_unavailable() {
        let hidden = "0000000000000000 T smap_gather_stats\n0000000000000000 t show_smap\n";
        assert!(Watched::parse(hidden.as_bytes(), &watch()).unwrap().all_hidden);
    }
}
