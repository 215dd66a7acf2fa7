//! EC2's published network allowance per instance type: the sustained baseline
//! and, for "up to" sizes, the burst they reach for minutes on credits.
//!
//! Reads nothing, needs nothing. Consulted by the `instance` collector once IMDS
//! names the instance type; `[collectors.instance] baseline` and `burst` win
//! over it, and are the way to cover a type missing here.
//!
//! Every figure is copied from AWS's own documentation, retrieved 2026-11-25
//! from stored copies of these pages (a size is in the table only when both its
//! baseline and whether it bursts were found; nothing is interpolated):
//!
//! - General purpose, "Network specifications" (m5, m6i, m6in, m7i):
//!   <https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html>, as captured
//!   verbatim in github.com/aws/karpenter-provider-aws at
//!   `hack/code/bandwidth_gen/example/gp.html` (commit c751b86014a9).
//! - EC2 User Guide, "Network performance" sections with their "Baseline
//!   bandwidth / Burst bandwidth" tables, from AWS's documentation repository
//!   github.com/awsdocs/amazon-ec2-user-guide: `compute-optimized-instances.md`
//!   (c5, c6i; commit 92f32b393e6b), `memory-optimized-instances.md` (r5, r6i,
//!   x2gd; commit d289961421fa), `storage-optimized-instances.md` (i3, i3en;
//!   commit db20d40782f4) and `accelerated-computing-instances.md` (g4dn, p3,
//!   p4d; commit 3a075fc9145f).
//! - The storage and accelerated pages above give only "Up to N Gbps" for i3,
//!   i3en, g4dn and p3.2xlarge; their baselines come from the "Baseline / Burst
//!   bandwidth" column of AWS's current so.html and ac.html pages as extracted
//!   into github.com/aws/karpenter-provider-aws
//!   `pkg/providers/instancetype/zz_generated.bandwidth.go` (commit 01a436f0bbbc).
//! - Compute, memory, storage optimized and accelerated computing, "Network
//!   specifications", column "Baseline / Burst bandwidth (Gbps)" (c6i.metal,
//!   c6in, c7i; r7i; i4i, im4gn; g5, g6, p5):
//!   <https://docs.aws.amazon.com/ec2/latest/instancetypes/co.html>, `mo.html`,
//!   `so.html` and `ac.html`. A size marked there as bursting on network I/O
//!   credits reads "baseline / burst" (e.g. "c6in.xlarge 6.25 / 30.0",
//!   "i4i.2xlarge 4.687 / 12.0", "g5.4xlarge 10.0 / 25.0"); every other size
//!   reads "N Gigabit" and sustains it. Read from Markdown and HTML conversions
//!   of those four pages held in the search tool's index of public GitHub
//!   files; the tool gave no repository, path or commit for them, only its
//!   file ids (co 58092467064, mo 60877627266, so 58117134324, ac 57948155246).
//!   Cross-checks: every baseline of these families equals karpenter's
//!   `zz_generated.bandwidth.go` above (commit 01a436f0bbbc), which parses the
//!   same column of the live pages (e.g. `"i4i.12xlarge": 28120` for "28.12
//!   Gigabit"); and the i4i (large to 16xlarge, 32xlarge, metal) and im4gn rows,
//!   bursts included, match a later version of awsdocs'
//!   `storage-optimized-instances.md` whose commit the tool did not give.
//!
//! c5.9xlarge: the older User Guide says "10 Gbps"; the current co.html and
//! karpenter give 12 Gigabit. The current page wins.
//!
//! Lookup is a binary search over a sorted static slice: no allocation.

/// One instance type's network allowance, in Gbit/s as EC2 publishes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    /// Sustained bandwidth (`BaselineBandwidthInGbps`).
    pub baseline_gbps: f64,
    /// The "up to" figure of sizes that burst on network I/O credits.
    pub burst_gbps: Option<f64>,
}

const fn fixed(gbps: f64) -> Allowance {
    Allowance {
        baseline_gbps: gbps,
        burst_gbps: None,
    }
}

const fn up_to(baseline_gbps: f64, burst_gbps: f64) -> Allowance {
    Allowance {
        baseline_gbps,
        burst_gbps: Some(burst_gbps),
    }
}

/// The allowance of `instance_type` (e.g. "m6i.large"), when the table has it.
pub fn lookup(instance_type: &str) -> Option<Allowance> {
    TABLE
        .binary_search_by(|(name, _)| (*name).cmp(instance_type))
        .ok()
        .map(|index| TABLE[index].1)
}

/// Sorted by name (byte order), which the binary search relies on and a test checks.
static TABLE: &[(&str, Allowance)] = &[
    ("c5.12xlarge", fixed(12.0)),
    ("c5.18xlarge", fixed(25.0)),
    ("c5.24xlarge", fixed(25.0)),
    ("c5.2xlarge", up_to(2.5, 10.0)),
    ("c5.4xlarge", up_to(5.0, 10.0)),
    ("c5.9xlarge", fixed(12.0)),
    ("c5.large", up_to(0.75, 10.0)),
    ("c5.metal", fixed(25.0)),
    ("c5.xlarge", up_to(1.25, 10.0)),
    ("c6i.12xlarge", fixed(18.75)),
    ("c6i.16xlarge", fixed(25.0)),
    ("c6i.24xlarge", fixed(37.5)),
    ("c6i.2xlarge", up_to(3.125, 12.5)),
    ("c6i.32xlarge", fixed(50.0)),
    ("c6i.4xlarge", up_to(6.25, 12.5)),
    ("c6i.8xlarge", fixed(12.5)),
    ("c6i.large", up_to(0.781, 12.5)),
    ("c6i.metal", fixed(50.0)),
    ("c6i.xlarge", up_to(1.562, 12.5)),
    ("c6in.12xlarge", fixed(75.0)),
    ("c6in.16xlarge", fixed(100.0)),
    ("c6in.24xlarge", fixed(150.0)),
    ("c6in.2xlarge", up_to(12.5, 40.0)),
    ("c6in.32xlarge", fixed(200.0)),
    ("c6in.4xlarge", up_to(25.0, 50.0)),
    ("c6in.8xlarge", fixed(50.0)),
    ("c6in.large", up_to(3.125, 25.0)),
    ("c6in.metal", fixed(200.0)),
    ("c6in.xlarge", up_to(6.25, 30.0)),
    ("c7i.12xlarge", fixed(18.75)),
    ("c7i.16xlarge", fixed(25.0)),
    ("c7i.24xlarge", fixed(37.5)),
    ("c7i.2xlarge", up_to(3.125, 12.5)),
    ("c7i.48xlarge", fixed(50.0)),
    ("c7i.4xlarge", up_to(6.25, 12.5)),
    ("c7i.8xlarge", fixed(12.5)),
    ("c7i.large", up_to(0.781, 12.5)),
    ("c7i.metal-24xl", fixed(37.5)),
    ("c7i.metal-48xl", fixed(50.0)),
    ("c7i.xlarge", up_to(1.562, 12.5)),
    ("g4dn.12xlarge", fixed(50.0)),
    ("g4dn.16xlarge", fixed(50.0)),
    ("g4dn.2xlarge", up_to(10.0, 25.0)),
    ("g4dn.4xlarge", up_to(20.0, 25.0)),
    ("g4dn.8xlarge", fixed(50.0)),
    ("g4dn.metal", fixed(100.0)),
    ("g4dn.xlarge", up_to(5.0, 25.0)),
    ("g5.12xlarge", fixed(40.0)),
    ("g5.16xlarge", fixed(25.0)),
    ("g5.24xlarge", fixed(50.0)),
    ("g5.2xlarge", up_to(5.0, 10.0)),
    ("g5.48xlarge", fixed(100.0)),
    ("g5.4xlarge", up_to(10.0, 25.0)),
    ("g5.8xlarge", fixed(25.0)),
    ("g5.xlarge", up_to(2.5, 10.0)),
    ("g6.12xlarge", fixed(40.0)),
    ("g6.16xlarge", fixed(25.0)),
    ("g6.24xlarge", fixed(50.0)),
    ("g6.2xlarge", up_to(5.0, 10.0)),
    ("g6.48xlarge", fixed(100.0)),
    ("g6.4xlarge", up_to(10.0, 25.0)),
    ("g6.8xlarge", fixed(25.0)),
    ("g6.xlarge", up_to(2.5, 10.0)),
    ("i3.16xlarge", fixed(25.0)),
    ("i3.2xlarge", up_to(2.5, 10.0)),
    ("i3.4xlarge", up_to(5.0, 10.0)),
    ("i3.8xlarge", fixed(10.0)),
    ("i3.large", up_to(0.75, 10.0)),
    ("i3.metal", fixed(25.0)),
    ("i3.xlarge", up_to(1.25, 10.0)),
    ("i3en.12xlarge", fixed(50.0)),
    ("i3en.24xlarge", fixed(100.0)),
    ("i3en.2xlarge", up_to(8.4, 25.0)),
    ("i3en.3xlarge", up_to(12.5, 25.0)),
    ("i3en.6xlarge", fixed(25.0)),
    ("i3en.large", up_to(2.1, 25.0)),
    ("i3en.metal", fixed(100.0)),
    ("i3en.xlarge", up_to(4.2, 25.0)),
    ("i4i.12xlarge", fixed(28.12)),
    ("i4i.16xlarge", fixed(37.5)),
    ("i4i.24xlarge", fixed(56.25)),
    ("i4i.2xlarge", up_to(4.687, 12.0)),
    ("i4i.32xlarge", fixed(75.0)),
    ("i4i.4xlarge", up_to(9.375, 25.0)),
    ("i4i.8xlarge", fixed(18.75)),
    ("i4i.large", up_to(0.781, 10.0)),
    ("i4i.metal", fixed(75.0)),
    ("i4i.xlarge", up_to(1.875, 10.0)),
    ("im4gn.16xlarge", fixed(100.0)),
    ("im4gn.2xlarge", up_to(12.5, 25.0)),
    ("im4gn.4xlarge", fixed(25.0)),
    ("im4gn.8xlarge", fixed(50.0)),
    ("im4gn.large", up_to(3.125, 25.0)),
    ("im4gn.xlarge", up_to(6.25, 25.0)),
    ("m5.12xlarge", fixed(12.0)),
    ("m5.16xlarge", fixed(20.0)),
    ("m5.24xlarge", fixed(25.0)),
    ("m5.2xlarge", up_to(2.5, 10.0)),
    ("m5.4xlarge", up_to(5.0, 10.0)),
    ("m5.8xlarge", fixed(10.0)),
    ("m5.large", up_to(0.75, 10.0)),
    ("m5.metal", fixed(25.0)),
    ("m5.xlarge", up_to(1.25, 10.0)),
    ("m6i.12xlarge", fixed(18.75)),
    ("m6i.16xlarge", fixed(25.0)),
    ("m6i.24xlarge", fixed(37.5)),
    ("m6i.2xlarge", up_to(3.125, 12.5)),
    ("m6i.32xlarge", fixed(50.0)),
    ("m6i.4xlarge", up_to(6.25, 12.5)),
    ("m6i.8xlarge", fixed(12.5)),
    ("m6i.large", up_to(0.781, 12.5)),
    ("m6i.metal", fixed(50.0)),
    ("m6i.xlarge", up_to(1.562, 12.5)),
    ("m6in.12xlarge", fixed(75.0)),
    ("m6in.16xlarge", fixed(100.0)),
    ("m6in.24xlarge", fixed(150.0)),
    ("m6in.2xlarge", up_to(12.5, 40.0)),
    ("m6in.32xlarge", fixed(200.0)),
    ("m6in.4xlarge", up_to(25.0, 50.0)),
    ("m6in.8xlarge", fixed(50.0)),
    ("m6in.large", up_to(3.125, 25.0)),
    ("m6in.metal", fixed(200.0)),
    ("m6in.xlarge", up_to(6.25, 30.0)),
    ("m7i.12xlarge", fixed(18.75)),
    ("m7i.16xlarge", fixed(25.0)),
    ("m7i.24xlarge", fixed(37.5)),
    ("m7i.2xlarge", up_to(3.125, 12.5)),
    ("m7i.48xlarge", fixed(50.0)),
    ("m7i.4xlarge", up_to(6.25, 12.5)),
    ("m7i.8xlarge", fixed(12.5)),
    ("m7i.large", up_to(0.781, 12.5)),
    ("m7i.metal-24xl", fixed(37.5)),
    ("m7i.metal-48xl", fixed(50.0)),
    ("m7i.xlarge", up_to(1.562, 12.5)),
    ("p3.16xlarge", fixed(25.0)),
    ("p3.2xlarge", up_to(2.5, 10.0)),
    ("p3.8xlarge", fixed(10.0)),
    ("p4d.24xlarge", fixed(400.0)),
    // ac.html: "3200 Gigabit" for the instance, which has 32 network cards;
    // like p4d's "4x 100 Gigabit" over 4 cards, it is the instance's total.
    ("p5.48xlarge", fixed(3200.0)),
    ("p5.4xlarge", fixed(100.0)),
    ("r5.12xlarge", fixed(12.0)),
    ("r5.16xlarge", fixed(20.0)),
    ("r5.24xlarge", fixed(25.0)),
    ("r5.2xlarge", up_to(2.5, 10.0)),
    ("r5.4xlarge", up_to(5.0, 10.0)),
    ("r5.8xlarge", fixed(10.0)),
    ("r5.large", up_to(0.75, 10.0)),
    ("r5.metal", fixed(25.0)),
    ("r5.xlarge", up_to(1.25, 10.0)),
    ("r6i.12xlarge", fixed(18.75)),
    ("r6i.16xlarge", fixed(25.0)),
    ("r6i.24xlarge", fixed(37.5)),
    ("r6i.2xlarge", up_to(3.125, 12.5)),
    ("r6i.32xlarge", fixed(50.0)),
    ("r6i.4xlarge", up_to(6.25, 12.5)),
    ("r6i.8xlarge", fixed(12.5)),
    ("r6i.large", up_to(0.781, 12.5)),
    ("r6i.metal", fixed(50.0)),
    ("r6i.xlarge", up_to(1.562, 12.5)),
    ("r7i.12xlarge", fixed(18.75)),
    ("r7i.16xlarge", fixed(25.0)),
    ("r7i.24xlarge", fixed(37.5)),
    ("r7i.2xlarge", up_to(3.125, 12.5)),
    ("r7i.48xlarge", fixed(50.0)),
    ("r7i.4xlarge", up_to(6.25, 12.5)),
    ("r7i.8xlarge", fixed(12.5)),
    ("r7i.large", up_to(0.781, 12.5)),
    ("r7i.metal-24xl", fixed(37.5)),
    ("r7i.metal-48xl", fixed(50.0)),
    ("r7i.xlarge", up_to(1.562, 12.5)),
    ("x2gd.12xlarge", fixed(20.0)),
    ("x2gd.16xlarge", fixed(25.0)),
    ("x2gd.2xlarge", up_to(2.5, 10.0)),
    ("x2gd.4xlarge", up_to(5.0, 10.0)),
    ("x2gd.8xlarge", fixed(12.0)),
    ("x2gd.large", up_to(0.75, 10.0)),
    ("x2gd.medium", up_to(0.5, 10.0)),
    ("x2gd.metal", fixed(25.0)),
    ("x2gd.xlarge", up_to(1.25, 10.0)),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (name, allowance) in TABLE {
            assert!(allowance.baseline_gbps > 0.0, "{name}");
            assert!(
                allowance.burst_gbps.is_none_or(|b| b > allowance.baseline_gbps),
                "{name}"
            );
        }
    }

    #[test]
    fn entries_match_the_published_figures() {
        // gp.html: "m6i.large 0.781 / 12.5", "m6i.8xlarge 12.5 Gigabit".
        assert_eq!(lookup("m6i.large"), Some(up_to(0.781, 12.5)));
        assert_eq!(lookup("m6i.8xlarge"), Some(fixed(12.5)));
        // gp.html: "m5.large 0.75 / 10.0", "m5.12xlarge 12 Gigabit".
        assert_eq!(lookup("m5.large"), Some(up_to(0.75, 10.0)));
        assert_eq!(lookup("m5.12xlarge"), Some(fixed(12.0)));
        // gp.html: "m6in.xlarge 6.25 / 30.0", "m7i.metal-48xl 50 Gigabit".
        assert_eq!(lookup("m6in.xlarge"), Some(up_to(6.25, 30.0)));
        assert_eq!(lookup("m7i.metal-48xl"), Some(fixed(50.0)));
        // Compute optimized: "c6i.4xlarge | 6.25 | 12.5", "c5.9xlarge | 12 Gigabit" (current co.html).
        assert_eq!(lookup("c6i.4xlarge"), Some(up_to(6.25, 12.5)));
        assert_eq!(lookup("c5.9xlarge"), Some(fixed(12.0)));
        // Memory optimized: "x2gd.medium | 0.5 | 10.0", "r6i.24xlarge | 37.5 Gigabit".
        assert_eq!(lookup("x2gd.medium"), Some(up_to(0.5, 10.0)));
        assert_eq!(lookup("r6i.24xlarge"), Some(fixed(37.5)));
        // Storage and accelerated: "i3en.24xlarge | 100 Gbps", "p4d.24xlarge | 4x100 Gbps",
        // g4dn.xlarge "Up to 25 Gbps" with a 5 Gbit/s baseline.
        assert_eq!(lookup("i3en.24xlarge"), Some(fixed(100.0)));
        assert_eq!(lookup("p4d.24xlarge"), Some(fixed(400.0)));
        assert_eq!(lookup("g4dn.xlarge"), Some(up_to(5.0, 25.0)));
    }

    #[test]
    fn compute_optimized_network_specifications() {
        // co.html: "c6in.large 3.125 / 25.0", "c6in.xlarge 6.25 / 30.0",
        // "c6in.4xlarge 25.0 / 50.0", "c6in.24xlarge 150 Gigabit",
        // "c6in.metal 200 Gigabit".
        assert_eq!(lookup("c6in.large"), Some(up_to(3.125, 25.0)));
        assert_eq!(lookup("c6in.xlarge"), Some(up_to(6.25, 30.0)));
        assert_eq!(lookup("c6in.4xlarge"), Some(up_to(25.0, 50.0)));
        assert_eq!(lookup("c6in.24xlarge"), Some(fixed(150.0)));
        assert_eq!(lookup("c6in.metal"), Some(fixed(200.0)));
        // co.html: "c7i.large 0.781 / 12.5", "c7i.4xlarge 6.25 / 12.5",
        // "c7i.8xlarge 12.5 Gigabit", "c7i.metal-24xl 37.5 Gigabit",
        // "c7i.48xlarge 50 Gigabit", "c6i.metal 50 Gigabit".
        assert_eq!(lookup("c7i.large"), Some(up_to(0.781, 12.5)));
        assert_eq!(lookup("c7i.4xlarge"), Some(up_to(6.25, 12.5)));
        assert_eq!(lookup("c7i.8xlarge"), Some(fixed(12.5)));
        assert_eq!(lookup("c7i.metal-24xl"), Some(fixed(37.5)));
        assert_eq!(lookup("c7i.48xlarge"), Some(fixed(50.0)));
        assert_eq!(lookup("c6i.metal"), Some(fixed(50.0)));
    }

    #[test]
    fn memory_optimized_network_specifications() {
        // mo.html: "r7i.large 0.781 / 12.5", "r7i.2xlarge 3.125 / 12.5",
        // "r7i.12xlarge 18.75 Gigabit", "r7i.metal-48xl 50 Gigabit".
        assert_eq!(lookup("r7i.large"), Some(up_to(0.781, 12.5)));
        assert_eq!(lookup("r7i.2xlarge"), Some(up_to(3.125, 12.5)));
        assert_eq!(lookup("r7i.12xlarge"), Some(fixed(18.75)));
        assert_eq!(lookup("r7i.metal-48xl"), Some(fixed(50.0)));
    }

    #[test]
    fn storage_optimized_network_specifications() {
        // so.html: "i4i.xlarge 1.875 / 10.0", "i4i.2xlarge 4.687 / 12.0",
        // "i4i.4xlarge 9.375 / 25.0", "i4i.12xlarge 28.12 Gigabit",
        // "i4i.metal 75 Gigabit".
        assert_eq!(lookup("i4i.xlarge"), Some(up_to(1.875, 10.0)));
        assert_eq!(lookup("i4i.2xlarge"), Some(up_to(4.687, 12.0)));
        assert_eq!(lookup("i4i.4xlarge"), Some(up_to(9.375, 25.0)));
        assert_eq!(lookup("i4i.12xlarge"), Some(fixed(28.12)));
        assert_eq!(lookup("i4i.metal"), Some(fixed(75.0)));
        // so.html: "im4gn.large 3.125 / 25.0", "im4gn.2xlarge 12.5 / 25.0",
        // "im4gn.4xlarge 25 Gigabit", "im4gn.16xlarge 100 Gigabit".
        assert_eq!(lookup("im4gn.large"), Some(up_to(3.125, 25.0)));
        assert_eq!(lookup("im4gn.2xlarge"), Some(up_to(12.5, 25.0)));
        assert_eq!(lookup("im4gn.4xlarge"), Some(fixed(25.0)));
        assert_eq!(lookup("im4gn.16xlarge"), Some(fixed(100.0)));
    }

    #[test]
    fn accelerated_computing_network_specifications() {
        // ac.html: "g5.xlarge 2.5 / 10.0", "g5.4xlarge 10.0 / 25.0",
        // "g5.12xlarge 40 Gigabit", "g5.16xlarge 25 Gigabit" (less than the
        // 12xlarge), "g5.48xlarge 100 Gigabit".
        assert_eq!(lookup("g5.xlarge"), Some(up_to(2.5, 10.0)));
        assert_eq!(lookup("g5.4xlarge"), Some(up_to(10.0, 25.0)));
        assert_eq!(lookup("g5.12xlarge"), Some(fixed(40.0)));
        assert_eq!(lookup("g5.16xlarge"), Some(fixed(25.0)));
        assert_eq!(lookup("g5.48xlarge"), Some(fixed(100.0)));
        // ac.html: "g6.2xlarge 5.0 / 10.0", "g6.8xlarge 25 Gigabit",
        // "g6.24xlarge 50 Gigabit".
        assert_eq!(lookup("g6.2xlarge"), Some(up_to(5.0, 10.0)));
        assert_eq!(lookup("g6.8xlarge"), Some(fixed(25.0)));
        assert_eq!(lookup("g6.24xlarge"), Some(fixed(50.0)));
        // ac.html: "p5.4xlarge 100 Gigabit", "p5.48xlarge 3200 Gigabit".
        assert_eq!(lookup("p5.4xlarge"), Some(fixed(100.0)));
        assert_eq!(lookup("p5.48xlarge"), Some(fixed(3200.0)));
    }

    #[test]
    fn unknown_types_are_absent() {
        for name in [
            "",
            "m6i",
            "m6i.",
            "M6I.LARGE",
            "m6i.large ",
            "p5e.48xlarge",
            "c6in",
            "i4i.medium",
            "zz.top",
            "a",
        ] {
            assert_eq!(lookup(name), None, "{name:?}");
        }
        // The first and last entries are reachable.
        assert!(lookup(TABLE[0].0).is_some());
        assert!(lookup(TABLE[TABLE.len() - 1].0).is_some());
    }
}
