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
//!   `pkg/providers/instancetype/zz_generated.bandwidth.go` (commit 01a436f0bbbc),
//!   which agrees with the pages above wherever both give a figure.
//!
//! Left out because a figure or the "up to" status could not be found: i4i,
//! im4gn, c6in, c7i, r7i, g5, g6, p5 and c6i.metal.
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
    ("c5.9xlarge", fixed(10.0)),
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
    ("c6i.xlarge", up_to(1.562, 12.5)),
    ("g4dn.12xlarge", fixed(50.0)),
    ("g4dn.16xlarge", fixed(50.0)),
    ("g4dn.2xlarge", up_to(10.0, 25.0)),
    ("g4dn.4xlarge", up_to(20.0, 25.0)),
    ("g4dn.8xlarge", fixed(50.0)),
    ("g4dn.metal", fixed(100.0)),
    ("g4dn.xlarge", up_to(5.0, 25.0)),
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
        // Compute optimized: "c6i.4xlarge | 6.25 | 12.5", "c5.9xlarge | 10 Gbps".
        assert_eq!(lookup("c6i.4xlarge"), Some(up_to(6.25, 12.5)));
        assert_eq!(lookup("c5.9xlarge"), Some(fixed(10.0)));
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
    fn unknown_types_are_absent() {
        for name in [
            "",
            "m6i",
            "m6i.",
            "M6I.LARGE",
            "m6i.large ",
            "p5.48xlarge",
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
